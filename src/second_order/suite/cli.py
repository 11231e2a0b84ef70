"""What ``scripts/train.py`` does with a composed config, and how it reports errors.

Exit statuses: 0 a run that finished (completed, budget or diverged); 2 a user
error, printed as one line ``error: ...`` (bad config value, unknown option, bad
data, unusable checkpoint); 128 + N a run stopped by signal N (130 SIGINT, 143
SIGTERM, 140 SIGUSR2: pre-emption), its checkpoint written; 1 a crash (a bug: traceback).
``SECOND_ORDER_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from second_order.suite.config import ConfigError, from_omegaconf_error
from second_order.suite.training.stop import preemption_signal

log = logging.getLogger("train")


def debug() -> bool:
    return os.environ.get("SECOND_ORDER_DEBUG", "") not in ("", "0")


class Stopped(BaseException):
    """SIGTERM outside a run (while Hydra starts, or between two jobs of a sweep).

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception``
    (Hydra's job and callback wrappers included) swallows it.  Inside a run the
    run's own handlers take over and stop it cleanly at the next chunk.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    del frame
    raise Stopped(signum)


#: The sweep directory of the multirun in progress (its table is written if a signal stops it between jobs).
_sweep_dir: Path | None = None


def exit_on_user_error(main: Callable[[], Any]) -> int:
    """Call the Hydra app; a user error becomes one line on stderr and status 2.

    SIGINT and SIGTERM outside a run (start-up, between sweep jobs) end the process
    with status 128 + N and, in a sweep, its ``sweep_summary.json``.
    """
    from second_order.suite.training.devices import quiet_absent_tpu_notice

    quiet_absent_tpu_notice()
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        main()
    except (KeyboardInterrupt, Stopped) as err:
        sig = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        where = ""
        if _sweep_dir is not None and _sweep_dir.is_dir():
            from second_order.suite.sweep import SWEEP_SUMMARY, write_sweep_summary

            write_sweep_summary(_sweep_dir, interrupted_by=sig)
            where = f"; sweep table in {_sweep_dir / SWEEP_SUMMARY}"
        print(f"error: stopped by {signal.Signals(sig).name}{where}", file=sys.stderr)
        return 128 + sig
    except Exception as err:
        message = one_line(err)
        if message is None or debug():
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return sweep_exit_status()


def sweep_exit_status() -> int:
    """0, or :data:`~second_order.suite.sweep.JOBS_FAILED` with one line naming a failed job when a
    multirun of this process ran to its end with failed jobs (scripts and CI must see them)."""
    from second_order.suite.sweep import JOBS_FAILED, SWEEP_SUMMARY, last_multirun

    ended = last_multirun()
    if ended is None or not ended.failed:
        return 0
    first = ended.failed[0]
    print(
        f"error: {len(ended.failed)} of {len(ended.rows)} sweep jobs failed, e.g. {first['run_dir']}: "
        f"{first.get('error') or first['status']}; the others ran (table in {ended.sweep_dir / SWEEP_SUMMARY})",
        file=sys.stderr,
    )
    return JOBS_FAILED


def train_job(cfg: DictConfig) -> float | None:
    """One job: run it, record failures of sweep jobs, exit as documented above.

    Returns the run's objective (what a Hydra sweeper such as Optuna minimises): the final
    validation loss with ``data.validation_examples > 0``, else the final training loss;
    ``inf`` for a diverged run (see :func:`second_order.suite.experiment.objective`).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from second_order.suite import experiment
    from second_order.suite.training.devices import initialize_distributed, quiet_absent_tpu_notice

    quiet_absent_tpu_notice()  # also in a launcher's worker process (joblib, submitit), which starts JAX afresh
    global _sweep_dir
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    _sweep_dir = Path(hc.sweep.dir) if multirun else None
    try:
        initialize_distributed()  # one task of a multi-task SLURM job step: before JAX starts its backends
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        summary = experiment.run(
            {str(k): v for k, v in container.items()}, run_dir, on_accept=lambda d: save_hydra_record(d, cfg)
        )
    except Exception as err:
        message = one_line(err)
        if debug() or (message is None and not multirun):
            raise
        if not multirun:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        if message is None:  # a crash: keep the sweep going, keep the traceback
            log.error("job crashed:\n%s", traceback.format_exc())
            message = f"{type(err).__name__}: {err}"
        else:
            log.error("job failed: %s", message)
        if not refused(err):  # a refused job leaves the run it found as it was
            record_failure(run_dir, cfg, message)
        return None
    if not summary:  # a secondary process of a multi-process run: process 0 reports
        return None
    log.info(
        "%s: %s after %d steps, train loss %s, test acc %s, optimizer time %.1f s -> %s",
        summary["optimizer"],
        summary["status"],
        summary["steps"],
        _fmt(summary.get("train_loss"), "{:.4g}"),
        _fmt(summary.get("test_acc"), "{:.2%}"),
        summary["train_time_s"],
        run_dir,
    )
    if summary["status"] == "interrupted":
        sig = int(summary.get("signal") or signal.SIGINT)
        if sig == preemption_signal() and callable(signal.getsignal(sig)):
            hand_over_preemption(sig)
        if multirun:  # stop the sweep too, with its table of every job on disk
            from second_order.suite.sweep import SWEEP_SUMMARY, write_sweep_summary

            write_sweep_summary(Path(hc.sweep.dir), interrupted_by=sig)
            name = signal.Signals(sig).name
            print(f"error: stopped by {name}; sweep table in {Path(hc.sweep.dir) / SWEEP_SUMMARY}", file=sys.stderr)
        sys.exit(128 + sig)
    value = summary.get("objective")
    return float(value) if value is not None else None


#: Where :func:`save_hydra_record` writes Hydra's record of the invocation in a run directory.
HYDRA_RECORD_DIR = ".hydra"


def refused_override(argv: Sequence[str]) -> str | None:
    """The error line for an override ``scripts/train.py`` refuses, else None.

    ``hydra.output_subdir``: Hydra would write its record there before the job starts, also
    into a run directory that then refuses the job (see :func:`save_hydra_record`, which
    writes ``.hydra/`` once the directory is the job's).  ``-m`` with ``--cfg`` / ``--info``:
    Hydra allows one mode and would end in a traceback; the line says to drop ``-m``.
    """
    from second_order.suite.local_config import override_key

    shown = [o for o in argv if o in ("--cfg", "-c", "--info", "-i") or o.startswith(("--cfg=", "--info="))]
    if shown and any(o in ("-m", "--multirun") for o in argv):
        return (
            f"error: {shown[0].split('=')[0]} and -m cannot be combined (Hydra prints one job's config): "
            "drop -m, e.g. python scripts/train.py hydra/launcher=slurm_gpu --cfg hydra"
        )
    if any(override_key(o) == "hydra.output_subdir" for o in argv):
        return (
            "error: hydra.output_subdir cannot be set: scripts/train.py writes Hydra's record to "
            f"<run dir>/{HYDRA_RECORD_DIR}/ itself, once the run directory accepts the job (Hydra would "
            "write it before, also over the record of a run that then refuses the job)"
        )
    return None


def save_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of this invocation, ``.hydra/{config,hydra,overrides}.yaml``, written once
    the run directory is this job's.

    Hydra itself would write them before the job starts (``hydra.output_subdir``, null in
    configs/config.yaml), so a job refused by a run directory (another configuration, no
    resume, locked) would overwrite the record of the run it found. Written atomically;
    nothing outside a Hydra job.
    """
    from hydra.core.hydra_config import HydraConfig

    from second_order.suite.tracking import runs

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg  # the "hydra" node alone, as Hydra saves it
    assert hydra_cfg is not None
    where = run_dir / HYDRA_RECORD_DIR
    where.mkdir(exist_ok=True)
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_cfg),
        ("overrides.yaml", HydraConfig.get().overrides.task),
    ):
        runs.write_text(where / name, OmegaConf.to_yaml(node))


def hand_over_preemption(sig: int) -> None:
    """Pass a pre-emption on to the handler the run found (submitit's: it requeues the job and exits).

    The checkpoint is written and the record says ``interrupted``; the requeued job resumes
    the run by itself. Returns when the handler does not requeue (then the job just ends).
    """
    log.info("pre-empted by %s: checkpoint written, handing over to the launcher", signal.Signals(sig).name)
    try:
        signal.raise_signal(sig)  # the handler runs before this returns
    except Exception as err:  # e.g. submitit's "timed-out too many times"
        log.error("not requeued: %s", one_line(err) or f"{type(err).__name__}: {err}")


def refused(err: BaseException) -> bool:
    """Whether ``err`` refused the run directory: another process holds it, or it holds a run this
    job may not continue. Its summary.json then belongs to that run and is left alone."""
    from second_order.suite.experiment import RunDirTaken
    from second_order.suite.training.resources import RunDirBusy

    return isinstance(err, (RunDirBusy, RunDirTaken))


def record_failure(run_dir: Path, cfg: DictConfig, message: str) -> None:
    """Mark a sweep job ``failed`` in its summary.json, keeping what it already had.

    Only failures before the run could start come here (the run records its own later ones). Under
    the run directory's lock (a directory another process holds is left alone); a finished or an
    interrupted record (which a requeued job resumes by itself) is never turned into a failed one,
    and the optimizer and seed it names are kept. A directory with no record before gets the
    job's ``.hydra/`` too (:func:`save_hydra_record`).
    """
    from second_order.suite.tracking import runs
    from second_order.suite.training.resources import RunDirBusy, RunDirLock

    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with RunDirLock(run_dir):
            base = runs.read_summary(run_dir) or {}
            if base.get("status") in ("completed", "budget", "diverged", "interrupted"):
                # re-running a sweep never turns a finished job into a failed one; an interrupted run
                # stays resumable (a failure before this job could start is not that run's failure)
                log.error("%s keeps its record (status %s)", run_dir, base["status"])
                return
            name = OmegaConf.select(cfg, "optimizer.name", default=None)
            seed = OmegaConf.select(cfg, "seed", default=None)
            record = {"optimizer": name, "seed": seed, **base, "status": "failed", "error": message}
            runs.write_json(run_dir / runs.SUMMARY_FILE, record)
            if not base:  # a directory of its own: what was asked, for whoever reads the failure
                save_hydra_record(run_dir, cfg)
    except RunDirBusy:
        log.error("%s is in use by another run: its record is left as it is", run_dir)


def _fmt(value: Any, spec: str) -> str:
    """A number for a log line (``n/a`` when missing or not finite)."""
    try:
        return spec.format(float(value)) if value is not None and float(value) == float(value) else "n/a"
    except (TypeError, ValueError):
        return "n/a"


#: File-system errors that are the user's to fix (permissions, a full disk, a file in the way).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR}  # fmt: skip


def _user_os_error(err: BaseException) -> OSError | None:
    """The file-system error behind ``err`` (itself or a cause, e.g. Hydra's log set-up), if it is the user's."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _USER_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def one_line(err: BaseException) -> str | None:
    """The one-line message of a user error (bad config, data or checkpoint), else None (a bug).

    Hydra's composition errors (an unknown group option, a new key without '+', a
    value of the wrong type) are user errors too: their lines are joined into one.
    """
    from hydra.errors import HydraException

    from second_order.suite.data import DataError
    from second_order.suite.training.checkpoint import CheckpointError
    from second_order.suite.training.resources import InsufficientMemory, RunDirBusy

    os_error = _user_os_error(err)
    if os_error is not None and os_error.errno == errno.EEXIST and Path(str(os_error.filename)).is_file():
        return f"{os_error.filename} is a file, not a directory (choose a run directory with hydra.run.dir=<dir>)"
    if os_error is not None:
        where = os_error.filename or "the run directory"
        full = os_error.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = "free space, or choose another" if full else "choose a writable"
        return f"cannot write {where}: {os_error.strerror or os_error} ({fix} directory with hydra.run.dir=<dir>)"
    if isinstance(err, (ConfigError, DataError, CheckpointError, RunDirBusy, InsufficientMemory)):
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, RuntimeError) and 'Could not detect "srun"' in str(err):  # submitit's SLURM executor
        local = " (configs/local/default.yaml may choose it: add ~local to leave that out)"
        return (
            "the SLURM launcher (hydra/launcher=slurm_gpu) needs a SLURM cluster and this machine has no srun: "
            "run the command on the cluster's login node, or choose another launcher (hydra/launcher=basic, "
            "parallel or local_processes)" + (local if _local_config_active() else "")
        )
    cause = err.__cause__
    if (
        isinstance(err, HydraException)
        and isinstance(cause, OmegaConfBaseException)
        and type(cause).__name__ == "ValidationError"
    ):
        return str(from_omegaconf_error(cause))
    missing = missing_option(str(err)) if isinstance(err, HydraException) else None
    if missing is not None:
        return missing
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(("full_key", "object_type", "reference_type"))]
        message = did_you_mean("; ".join(lines)) or type(err).__name__
        from second_order.suite.launchers import CONFIGS
        from second_order.suite.local_config import launcher_key_hint

        return message + launcher_key_hint(message, CONFIGS)
    return None


def missing_option(message: str) -> str | None:
    """Hydra's "Could not find 'optimizer/nonexistent'" with its list of options (one per line, then
    the config search path) as one short line: the group, the option asked for, the closest, all."""
    import difflib
    import re

    found = re.search(r"Could not find '([\w/]+)/([^'/]+)'", message)
    listed = re.search(r"Available options in '[^']+':\n(.*?)(?:\nConfig search path:|$)", message, re.S)
    if found is None or listed is None:
        return None
    group, option = found.groups()
    options = [line.strip() for line in listed.group(1).splitlines() if line.strip()]
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return f"{group}={option}: no such file configs/{group}/{option}.yaml; {hint}available: {', '.join(options)}"


def _local_config_active() -> bool:
    """Whether ``configs/local/default.yaml`` exists and is not switched off (SECOND_ORDER_NO_LOCAL_CONFIG)."""
    from second_order.suite.launchers import CONFIGS
    from second_order.suite.local_config import switched_off

    return (CONFIGS / "local" / "default.yaml").exists() and not switched_off()


def shown_path(path: Path, checkout: Path) -> str:
    """``path`` relative to ``checkout`` when it is inside it (as a user would type it), for messages."""
    path = path.resolve()
    return str(path.relative_to(checkout)) if path.is_relative_to(checkout) else str(path)


def exit_status(returncode: int) -> int:
    """A child process's exit status as a shell reports it (``subprocess`` gives ``-N`` for a
    child killed by signal N: 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


def child_failed(returncode: int, what: str) -> int:
    """One line for a child job that failed or was stopped (it printed its own error above); returns
    its exit status (:func:`exit_status`) for the parent to exit with (scripts/reproduce.py, study.py)."""
    rc = exit_status(returncode)
    how, again = (
        (f"was stopped by a signal (exit status {rc})", "run the same command again to go on")
        if rc >= 128
        else (f"failed with exit status {rc} (its message is above)", "fix it and run the same command again")
    )
    print(f"error: {what} {how}; {again} (finished runs are kept)", file=sys.stderr)
    return rc


def did_you_mean(message: str) -> str:
    """Hydra's ``Could not override 'trainer.epochz'`` with the closest key there is, if any
    (the schema's keys and every parameter of the optimizers in :mod:`second_order.optim`)."""
    import difflib
    import inspect
    import re

    import second_order.optim as optim
    from second_order.suite.config import schema_defaults

    match = re.search(r"Could not override '([^']+)'\.?", message)
    if match is None:
        return message
    keys = set(schema_defaults())
    for name in optim.__all__:
        fn = getattr(optim, name)
        if inspect.isfunction(fn):
            keys |= {f"optimizer.{p}" for p in inspect.signature(fn).parameters}
    if match.group(1) in keys:  # a key of other optimizers: Hydra's own advice (+key=...) holds
        return message
    close = difflib.get_close_matches(match.group(1), sorted(keys), n=1, cutoff=0.8)
    if not close:
        return message
    return message.replace(match.group(0), f"{match.group(0).rstrip('.')} (no such key; did you mean {close[0]}?)")
