"""Where a run's arrays live: a data-parallel mesh over the devices of every process.

Data parallelism by sharding annotations (GSPMD, ``jax.jit`` with ``NamedSharding``):
the mesh has one axis, ``data``, over the run's devices.  Each step's batch is split
along it; everything else (parameters, optimizer state, the training and test sets) is
replicated.  XLA partitions the jitted step accordingly: each device runs the forward
and backward passes on its slice of the batch, and an all-reduce is inserted wherever a
replicated value depends on the whole batch (the mean loss, the gradient, every
Hessian-, Gauss-Newton- and Fisher-vector product, K-FAC's factors, Sophia's and
AdaHessian's estimates).  CG, Lanczos, eigendecompositions and the small dense solves
then run on replicated values, identically on every device: no optimizer needs code
for it, and the per-step losses equal the single-device ones up to the order of the
floating-point sums (``tests/test_devices.py``).  The batch may be uneven across the
devices (64 on 3): XLA pads the last shard.

In a multi-process job (several hosts; :func:`initialize_distributed`) the mesh spans the
devices of every process, every process runs the same program on the same data, and
only the primary process (index 0) writes files; decisions taken on the host (stop on a
signal or a time budget) are agreed between the processes first.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from second_order.suite.config import ConfigError

DATA_AXIS = "data"
log = logging.getLogger(__name__)

#: JAX's SLURM detection reads these (set by ``srun`` in every task of a job step).
SLURM_TASK_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
#: ``1``: always call ``jax.distributed.initialize()`` (any cluster JAX detects); ``0``: never; unset: SLURM.
DISTRIBUTED_ENV = "SECOND_ORDER_DISTRIBUTED"
#: Wheels that give JAX a GPU backend (``make setup JAX_VARIANT=cuda12`` installs the first).
GPU_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin", "jax-rocm7-plugin")
#: Device files of an NVIDIA or AMD GPU.
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/kfd")


def wants_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one task of several: ``$SECOND_ORDER_DISTRIBUTED``, else a multi-task SLURM step."""
    env = os.environ if environ is None else environ
    explicit = env.get(DISTRIBUTED_ENV, "").strip().lower()
    if explicit in ("0", "false", "off", "no"):
        return False
    if explicit in ("1", "true", "on", "yes"):
        return True
    if not all(k in env for k in SLURM_TASK_VARIABLES):
        return False  # not inside srun (a batch script's own shell, or no SLURM)
    try:
        return int(env["SLURM_NTASKS"]) > 1
    except ValueError:
        return False


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """``jax.distributed.initialize()`` once, before JAX starts its backends, when :func:`wants_distributed`.

    Launched as ``srun -n N python scripts/train.py ...`` (N tasks, e.g. one per host),
    JAX reads the coordinator (first node of the step, a port derived from the job id),
    the process count and index from SLURM's variables.  Returns whether this process is
    part of a multi-process job.
    """
    if jax.distributed.is_initialized():
        return True
    if not wants_distributed(environ):
        return False
    jax.distributed.initialize()
    log.info(
        "distributed JAX: process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def requested_platforms() -> str | None:
    """The platforms JAX was told to use (``JAX_PLATFORMS`` or ``jax_platforms``), None if it chooses."""
    return getattr(jax.config, "jax_platforms", None) or None  # a property jax.config does not type


def local_devices() -> list[Any]:
    """``jax.local_devices()``; a ConfigError naming ``JAX_PLATFORMS`` when JAX cannot start the
    backend it asks for (JAX itself raises a bare AssertionError for ``cuda`` without the plugin)."""
    try:
        return jax.local_devices()
    except (RuntimeError, AssertionError) as err:
        wanted = requested_platforms()
        if not wanted:
            raise
        why = "; ".join(f"{k}: {v}" for k, v in backend_errors().items()) or str(err).split(" (set JAX_PLATFORMS")[0]
        raise ConfigError(
            f"JAX_PLATFORMS={wanted}: JAX cannot start that backend ({why or 'no such backend in this JAX'}); "
            "install a JAX that has it (for a GPU: make setup JAX_VARIANT=cuda12), or unset JAX_PLATFORMS "
            "to run on what JAX finds"
        ) from err


def select_devices(requested: int | None) -> list[Any]:
    """The run's devices: ``requested`` (``trainer.devices``; None: all) local devices of every process."""
    local = local_devices()
    if requested is not None and not 1 <= requested <= len(local):
        raise ConfigError(
            f"trainer.devices = {requested} is invalid: this process has {len(local)} {local[0].platform} "
            f"device(s); set trainer.devices to at most {len(local)}, or null for all of them"
        )
    n = len(local) if requested is None else requested
    if jax.process_count() == 1:
        return local[:n]
    return [d for p in range(jax.process_count()) for d in [d for d in jax.devices() if d.process_index == p][:n]]


@dataclasses.dataclass(frozen=True)
class Placement:
    """A one-axis ``data`` mesh: batches split along it, everything else replicated."""

    mesh: Mesh

    @classmethod
    def over(cls, devices: list[Any]) -> Placement:
        return cls(Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,)))

    @property
    def devices(self) -> list[Any]:
        return list(self.mesh.devices.flat)

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) axis split over the devices."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def primary(self) -> bool:
        """Whether this process writes the run's files (process 0)."""
        return jax.process_index() == 0

    def replicate(self, tree: Any) -> Any:
        """A copy of ``tree`` (host or device arrays) on every device of the mesh."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(x: Any) -> jax.Array:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])

        return jax.tree_util.tree_map(put, tree)

    def constrain_batch(self, tree: Any) -> Any:
        """Inside jit: split the leading axis of every leaf over the devices."""
        return jax.lax.with_sharding_constraint(tree, self.batch)

    def max_over_processes(self, value: int) -> int:
        """The largest of the processes' ``value`` (a collective: every process must call it)."""
        if jax.process_count() == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))

    def any_process(self, flag: bool) -> bool:
        """``flag`` or-ed over the processes (a collective: every process must call it)."""
        return self.max_over_processes(int(bool(flag))) > 0

    def check_same(self, value: int, what: str) -> None:
        """Refuse to go on when the processes disagree on ``value`` (e.g. the step a resume starts from)."""
        if jax.process_count() == 1:
            return
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.process_allgather(np.asarray([value]))).ravel()
        if len(set(values.tolist())) > 1:
            raise ConfigError(
                f"the {jax.process_count()} processes disagree on {what} ({values.tolist()}); every task "
                "must see the same run directory (a shared file system)"
            )


def backend_errors() -> dict[str, str]:
    """Why JAX could not start each backend it tried (``{"cuda": "...", "tpu": "..."}``).

    Read from ``jax._src.xla_bridge._backend_errors`` (private; ``{}`` where a JAX lacks it).
    """
    from jax._src import xla_bridge

    return {str(k): str(v) for k, v in dict(getattr(xla_bridge, "_backend_errors", None) or {}).items()}


class AbsentTpuNotice(logging.Filter):
    """Drops JAX's INFO line that the machine has no TPU (no ``libtpu.so``), printed by every run elsewhere.

    Other backends' failures (a CUDA plugin that does not load) still reach the log, and
    :func:`gpu_fallback_warning` repeats them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO and record.getMessage().startswith("Unable to initialize backend 'tpu'")
        )


def quiet_absent_tpu_notice() -> None:
    """Install :class:`AbsentTpuNotice` on JAX's backend logger (once)."""
    logger = logging.getLogger("jax._src.xla_bridge")
    if not any(isinstance(f, AbsentTpuNotice) for f in logger.filters):
        logger.addFilter(AbsentTpuNotice())


def gpu_fallback_warning() -> str | None:
    """Why this run is on the CPU although a GPU path was set up or a GPU is present; None otherwise.

    JAX falls back to the CPU with only a log line when its CUDA plugin fails to load
    or finds no device; a timed run would then report CPU times as if they were GPU ones.
    """
    if jax.default_backend() != "cpu":
        return None
    plugins = []
    for name in GPU_PLUGINS:
        try:
            importlib.metadata.version(name)
            plugins.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if plugins:
        why = "; ".join(f"{name}: {err}" for name, err in backend_errors().items() if name != "tpu")
        reason = f"{plugins[0]} is installed but JAX found no usable GPU ({why or 'see JAX log above'})"
    elif any(Path(f).exists() for f in GPU_DEVICE_FILES):
        reason = "a GPU is present but this JAX has no GPU backend (make setup JAX_VARIANT=cuda12)"
    else:
        return None
    return (
        f"JAX is running on the CPU: {reason}. Times in this run are CPU times (recorded as backend 'cpu'); "
        "set JAX_PLATFORMS=cuda to make this an error instead"
    )


def describe(placement: Placement) -> dict[str, Any]:
    """What a run records about where it ran (summary.json and each segment)."""
    first = placement.devices[0]
    return {
        "backend": first.platform,
        "device_kind": first.device_kind,
        "num_devices": placement.num_devices,
        "num_processes": jax.process_count(),
    }
