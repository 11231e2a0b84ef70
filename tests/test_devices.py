"""Data parallelism (training/devices.py): equal losses on 1 and 4 devices for every optimizer, a 2-process
job through JAX's SLURM detection, device records, the GPU-fallback warning and trainer.devices."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, compose_config, xla_flags
from multidevice_worker import STEPS

from second_order.suite import experiment
from second_order.suite.config import ConfigError
from second_order.suite.tracking import runs
from second_order.suite.training import checkpoint, devices
from second_order.suite.training.devices import Placement, select_devices, wants_distributed

N_DEVICES = 4
#: Per-step relative tolerance between 1 and 4 devices, float64 parameters and curvature. The observed
#: differences are the order of the floating-point sums: ≤ 1e-15 for most methods, 3e-13 for exact Newton
#: (pinv), 7e-12 for Gauss-Newton and 3e-12 with LM over 4 steps (4e-10 over 6: LM's test on ρ amplifies).
RTOL = 1e-9
#: Every optimizer config but two exact-Newton presets, newton with other values and the same code:
#: newton_damped (damping 32) and newton_paper_precision (a float32 first step, float64 here). Exact Newton's
#: solves run replicated, 4 times over on 4 host devices sharing 2 cores: each preset costs 20-40 s.
OPTIMIZERS = sorted(
    p.stem
    for p in (REPO / "configs" / "optimizer").glob("*.yaml")
    if p.stem not in ("newton_damped", "newton_paper_precision")
)


@pytest.fixture(scope="module")
def on_four_devices(real_mnist_dir, tmp_path_factory) -> dict:
    """Every optimizer for a few steps (two chunks) on 1 and on 4 (forced host) devices, in one subprocess."""
    out = tmp_path_factory.mktemp("devices") / "losses.json"
    forced = xla_flags(f"--xla_force_host_platform_device_count={N_DEVICES}")
    env = {**os.environ, "XLA_FLAGS": forced, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "multidevice_worker.py"), str(real_mnist_dir), str(out),
         str(N_DEVICES), *OPTIMIZERS],
        capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_per_step_losses_on_four_devices_equal_one_device(on_four_devices, name):
    assert on_four_devices["devices"] == N_DEVICES
    runs_by_count = on_four_devices["results"][name]
    one, four = runs_by_count["1"], runs_by_count[str(N_DEVICES)]
    assert one["status"] == four["status"] == "budget"
    assert len(one["train_loss"]) == len(four["train_loss"]) == STEPS
    np.testing.assert_allclose(four["train_loss"], one["train_loss"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(four["test_loss"], one["test_loss"], rtol=RTOL, atol=0)


@pytest.mark.slow
def test_a_batch_that_does_not_divide_evenly_over_the_devices(on_four_devices):
    sgd = on_four_devices["results"]["sgd"]
    np.testing.assert_allclose(sgd["3"]["train_loss"], sgd["1"]["train_loss"], rtol=RTOL, atol=0)


@pytest.mark.slow
def test_the_compiled_step_splits_the_batch_and_reduces_across_devices(on_four_devices):
    assert on_four_devices["hlo"] == {"all_reduce": True, "per_device_batch": True}


def _slurm_task(rank: int, job_id: int) -> dict[str, str]:
    """The variables srun sets in task ``rank`` of a 2-task job step on this host (JAX's SLURM detection)."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
    }


def two_devices() -> dict[str, str]:
    """Two host devices per task (a 2-task job has 4), at this session's XLA optimization level."""
    return {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2")}


def _job_overrides(optimizer: str, mnist_dir, steps: int, chunk: int) -> list[str]:
    """A short float64 run (equal losses across device counts need float64)."""
    return [
        f"optimizer={optimizer}", f"data.dir={mnist_dir}", "model.param_dtype=float64", f"trainer.max_steps={steps}",
        f"trainer.chunk_steps={chunk}", "trainer.progress=false", "logger.wandb.mode=disabled",
    ]  # fmt: skip


def _launch_job(overrides: list[str], job_id: int) -> list[subprocess.Popen]:
    """``scripts/train.py`` as the two tasks of one SLURM job step, two host devices each."""
    return [_train(overrides, {**two_devices(), **_slurm_task(rank, job_id)}) for rank in (0, 1)]


def _train(overrides: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "WANDB_SILENT": "true", "JAX_PLATFORMS": "cpu", **env}
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=full,
    )  # fmt: skip


@pytest.mark.slow
def test_a_two_process_slurm_job_trains_like_one_process(real_mnist_dir, tmp_path):
    common = _job_overrides("gauss_newton", real_mnist_dir, steps=6, chunk=3)
    job_id = 1000 + os.getpid() % 3000  # JAX's coordinator port follows the job id
    tasks = _launch_job([*common, f"hydra.run.dir={tmp_path / 'job'}"], job_id)
    single = _train([*common, f"hydra.run.dir={tmp_path / 'single'}"], {})
    outputs = [p.communicate(timeout=600)[0] for p in (*tasks, single)]
    assert [p.returncode for p in (*tasks, single)] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    summary = runs.read_summary(tmp_path / "job")
    assert summary is not None and summary["status"] == "budget"
    assert (summary["num_devices"], summary["num_processes"]) == (4, 2)
    assert summary["segments"][0]["num_devices"] == 4
    job = runs.read_table(tmp_path / "job" / runs.STEPS_FILE)
    ref = runs.read_table(tmp_path / "single" / runs.STEPS_FILE)
    np.testing.assert_array_equal(job["step"], np.arange(1, 7))  # one writer: no row twice
    np.testing.assert_allclose(job["train_loss"], ref["train_loss"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(job["cg_iterations"], ref["cg_iterations"])


@pytest.mark.slow
def test_a_signal_to_one_task_stops_both_at_one_step_and_the_job_resumes(real_mnist_dir, tmp_path):
    common = _job_overrides("sgd", real_mnist_dir, steps=400, chunk=5)
    job_id = 1000 + (os.getpid() + 1) % 3000
    run_dir = tmp_path / "job"

    def launch(*extra: str) -> list[subprocess.Popen]:
        return _launch_job([*common, f"hydra.run.dir={run_dir}", *extra], job_id)

    tasks = launch()
    steps_file, deadline = run_dir / runs.STEPS_FILE, time.monotonic() + 300
    while time.monotonic() < deadline and not (steps_file.exists() and steps_file.read_text().count("\n") > 20):
        time.sleep(0.02)
    tasks[1].send_signal(signal.SIGTERM)  # the secondary task only
    outputs = [p.communicate(timeout=300)[0] for p in tasks]
    assert tasks[0].returncode == 128 + signal.SIGTERM, outputs[0][-2000:]  # task 0 reports the stop
    summary = runs.read_summary(run_dir)
    assert summary is not None and summary["status"] == "interrupted" and summary["signal"] == signal.SIGTERM
    stopped_at = summary["steps"]
    assert 20 <= stopped_at < 400 and checkpoint.latest_step(run_dir) == stopped_at

    resumed = launch("trainer.resume=true")
    outputs = [p.communicate(timeout=300)[0] for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    reference = tmp_path / "single"
    experiment.run(compose_config([*common, "trainer.devices=1"]), reference)
    job, ref = runs.read_table(run_dir / runs.STEPS_FILE), runs.read_table(reference / runs.STEPS_FILE)
    np.testing.assert_array_equal(job["step"], np.arange(1, 401))
    np.testing.assert_allclose(job["train_loss"], ref["train_loss"], rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        (_slurm_task(0, 7), True),
        ({**_slurm_task(1, 7), "SLURM_NTASKS": "1"}, False),  # one task per job (the submitit launcher)
        ({k: v for k, v in _slurm_task(0, 7).items() if k != "SLURM_STEP_NODELIST"}, False),  # not under srun
        ({**_slurm_task(0, 7), "SECOND_ORDER_DISTRIBUTED": "0"}, False),
        ({"SECOND_ORDER_DISTRIBUTED": "1"}, True),  # any cluster JAX detects (Open MPI, Kubernetes, ...)
    ],
)
def test_when_a_process_joins_a_distributed_job(env, expected):
    assert wants_distributed(env) is expected


def test_single_process_agreement_is_the_local_value():
    place = Placement.over(select_devices(None))
    assert place.primary and place.num_devices == jax.local_device_count()
    assert place.any_process(True) and not place.any_process(False)
    place.check_same(5, "the step")  # nothing to disagree with


def test_more_devices_than_the_process_has_is_one_line_naming_the_key(tmp_path, real_mnist_dir):
    n, platform = jax.local_device_count() + 1, jax.local_devices()[0].platform
    cfg = compose_config([f"trainer.devices={n}", f"data.dir={real_mnist_dir}"])
    with pytest.raises(ConfigError, match=rf"trainer.devices = {n} is invalid: this process has {n - 1} {platform}"):
        experiment.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_gpu_fallback_is_named_loudly(monkeypatch):
    monkeypatch.setattr(devices.jax, "default_backend", lambda: "cpu")  # as on a CPU machine, also on a GPU one
    monkeypatch.setattr(devices, "GPU_DEVICE_FILES", ("/nonexistent/nvidia0",))
    monkeypatch.setattr(devices.importlib.metadata, "version", _only_installed("jax"))
    assert devices.gpu_fallback_warning() is None  # a CPU machine with CPU JAX: nothing to say
    monkeypatch.setattr(devices.importlib.metadata, "version", _only_installed("jax-cuda12-plugin"))
    message = devices.gpu_fallback_warning()
    assert message is not None and "jax-cuda12-plugin is installed" in message and "JAX_PLATFORMS=cuda" in message
    reasons = {"tpu": "no libtpu.so", "cuda": "CUDA_ERROR_NO_DEVICE"}
    monkeypatch.setattr(devices, "backend_errors", lambda: reasons)  # JAX's own reason is repeated, not the TPU's
    message = devices.gpu_fallback_warning() or ""
    assert "(cuda: CUDA_ERROR_NO_DEVICE)" in message and "libtpu" not in message, message
    monkeypatch.setattr(devices, "GPU_DEVICE_FILES", (str(Path(__file__)),))  # a GPU device file, no plugin
    monkeypatch.setattr(devices.importlib.metadata, "version", _only_installed("jax"))
    assert "JAX_VARIANT=cuda12" in (devices.gpu_fallback_warning() or "")
    monkeypatch.setattr(devices.jax, "default_backend", lambda: "gpu")
    assert devices.gpu_fallback_warning() is None


def test_a_backend_jax_cannot_start_is_one_line_naming_jax_platforms(monkeypatch):
    """``JAX_PLATFORMS=cuda`` with a CPU-only JAX: JAX raises a bare AssertionError; the run says what to do."""

    def no_backend():
        raise AssertionError

    monkeypatch.setattr(devices.jax, "local_devices", no_backend)
    with monkeypatch.context() as m:
        m.setattr(devices, "requested_platforms", lambda: "cuda")
        with pytest.raises(ConfigError, match=r"^JAX_PLATFORMS=cuda: JAX cannot start .*make setup JAX_VARIANT=cuda12"):
            select_devices(None)
    with pytest.raises(AssertionError):  # JAX_PLATFORMS unset: not the user's doing, the traceback stays
        select_devices(None)


def _only_installed(name: str):
    import importlib.metadata

    def version(dist: str) -> str:
        if dist != name:
            raise importlib.metadata.PackageNotFoundError(dist)
        return "1.0"

    return version


@pytest.mark.slow
def test_a_run_on_a_fallen_back_cpu_says_so_in_its_summary(monkeypatch, tmp_path, real_mnist_dir):
    if jax.default_backend() != "cpu":
        pytest.skip(f"a CPU run with a GPU plugin installed; this machine runs JAX on {jax.default_backend()}")
    monkeypatch.setattr(devices, "GPU_DEVICE_FILES", ("/nonexistent",))
    monkeypatch.setattr(devices.importlib.metadata, "version", _only_installed("jax-cuda12-plugin"))
    cfg = compose_config(
        ["optimizer=sgd", f"data.dir={real_mnist_dir}", "trainer.max_steps=2", "trainer.progress=false",
         "logger.wandb.mode=disabled"]
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="JAX is running on the CPU: jax-cuda12-plugin is installed"):
        summary = experiment.run(cfg, tmp_path / "run")
    assert summary["backend"] == "cpu" and summary["num_devices"] == 1 and summary["num_processes"] == 1
    assert "JAX is running on the CPU" in summary["device_warning"]
    assert runs.read_summary(tmp_path / "run")["device_warning"] == summary["device_warning"]


def test_only_the_absent_tpu_notice_is_dropped_from_jax_log():
    notice = devices.AbsentTpuNotice()

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("jax._src.xla_bridge", level, __file__, 1, message, None, None)

    assert not notice.filter(record(logging.INFO, "Unable to initialize backend 'tpu': INTERNAL: libtpu.so"))
    assert notice.filter(record(logging.INFO, "Unable to initialize backend 'cuda': no device"))
    assert notice.filter(record(logging.WARNING, "Unable to initialize backend 'tpu': asked for by JAX_PLATFORMS"))
    assert isinstance(devices.backend_errors(), dict)  # JAX's private record, or {} where it has none
