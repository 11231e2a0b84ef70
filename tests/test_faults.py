"""Faults end in one clear line and a truthful record: locks, signals, bad input, memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, compose_config
from test_pipeline import train_cli

from second_order.suite import experiment
from second_order.suite.cli import one_line
from second_order.suite.config import ConfigError
from second_order.suite.tracking import runs
from second_order.suite.training import resources

QUIET = ["logger.wandb.mode=disabled", "trainer.progress=false"]


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path):
    with resources.RunDirLock(tmp_path):
        with pytest.raises(resources.RunDirBusy) as err:
            experiment.run(compose_config(["optimizer=sgd", "data.dir=/nonexistent", *QUIET]), tmp_path)
    message = one_line(err.value)
    assert message is not None and str(tmp_path) in message and "in use" in message
    assert not (tmp_path / runs.SUMMARY_FILE).exists()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from second_order.suite.training.resources import RunDirLock\n"
         "with RunDirLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    with pytest.raises(resources.RunDirBusy):
        resources.RunDirLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with resources.RunDirLock(tmp_path):  # the kernel released it with the process
        pass


def test_memory_check_refuses_a_step_that_cannot_fit(monkeypatch):
    n = 4000
    compiled = jax.jit(lambda x: jnp.linalg.cholesky(x[:, None] * x[None, :] + jnp.eye(n)).sum()).lower(
        jnp.ones(n)).compile()  # fmt: skip
    resources.check_fits(compiled, jax.devices()[0])  # 128 MB of temporaries: fits
    monkeypatch.setattr(resources, "available_bytes", lambda device: 10_000_000)
    with pytest.raises(resources.InsufficientMemory) as err:
        resources.check_fits(compiled, jax.devices()[0])
    message = one_line(err.value)
    assert message is not None and "GB" in message and "hessian_free" in message


def test_a_run_directory_that_is_a_file_or_under_one_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        experiment.run(compose_config(["optimizer=sgd", "data.dir=/nonexistent", *QUIET]), blocker)
    with pytest.raises(OSError) as err:
        experiment.run(compose_config(["optimizer=sgd", "data.dir=/nonexistent", *QUIET]), blocker / "run")
    message = one_line(err.value)
    assert message is not None and str(blocker) in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("overrides,key", [(["model.num_classes=5"], "model.num_classes"),
                                           (["trainer.batch_size=60001"], "trainer.batch_size")])  # fmt: skip
def test_config_that_disagrees_with_the_data_is_refused(real_mnist_dir, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        experiment.run(compose_config(["optimizer=sgd", f"data.dir={real_mnist_dir}", *QUIET, *overrides]), tmp_path)
    assert not (tmp_path / runs.STEPS_FILE).exists()


@pytest.mark.slow
def test_a_diverged_run_has_one_time_axis(real_mnist_dir, tmp_path):
    cfg = compose_config(["optimizer=sgd", "optimizer.learning_rate=1000", f"data.dir={real_mnist_dir}",
                          "trainer.max_steps=200", "trainer.chunk_steps=100", *QUIET])  # fmt: skip
    summary = experiment.run(cfg, tmp_path)
    assert summary["status"] == "diverged" and summary["steps"] < 100
    logged = runs.read_table(tmp_path / runs.STEPS_FILE)["time_s"]
    assert summary["train_time_s"] == pytest.approx(float(logged[-1]), rel=1e-12)


def _wait_for(path: Path, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate(path):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached the expected state")


@pytest.mark.slow
def test_sigterm_during_start_up_ends_in_an_interrupted_record(real_mnist_dir, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), "optimizer=gauss_newton", f"data.dir={real_mnist_dir}",
         f"hydra.run.dir={tmp_path}", *QUIET], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    summary = tmp_path / runs.SUMMARY_FILE
    _wait_for(summary, lambda p: json.loads(p.read_text())["status"] == "running")  # set-up done, compiling next
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    record = json.loads(summary.read_text())
    assert record["status"] == "interrupted" and record["steps"] == 0, record


@pytest.mark.slow
def test_sigterm_during_a_sweep_exits_143_with_its_table(real_mnist_dir, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), "-m", "optimizer=sgd,hessian_free",
         f"data.dir={real_mnist_dir}", "trainer.max_steps=3000", "trainer.chunk_steps=10",
         f"hydra.sweep.dir={tmp_path}",
         *QUIET], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for(tmp_path, lambda p: any(f.read_text().count("\n") > 20 for f in p.rglob(runs.STEPS_FILE)))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; sweep table in"), stderr[-2000:]
    table = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert table["interrupted_by_signal"] == signal.SIGTERM
    assert [job["status"] for job in table["jobs"]] == ["interrupted"]


@pytest.mark.slow
def test_sigterm_between_two_sweep_jobs_exits_143_with_its_table(real_mnist_dir, tmp_path):
    """The signal lands after job 1 has ended and before job 2 has started (no run holds the handlers)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "-m", "optimizer=sgd", "seed=0,1",
         f"data.dir={real_mnist_dir}", "trainer.max_steps=5", f"hydra.sweep.dir={tmp_path}",
         "+hydra.callbacks.terminate._target_=hydra_callbacks.TerminateAfterFirstJob", *QUIET],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; sweep table in")
    table = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert table["interrupted_by_signal"] == signal.SIGTERM
    assert [(job["seed"], job["status"]) for job in table["jobs"]] == [(0, "budget")]


@pytest.mark.slow
@pytest.mark.parametrize("run_dir", ["/sys/kernel", "/sys/no_such_dir"])
def test_a_read_only_run_directory_is_one_line(real_mnist_dir, run_dir):
    """sysfs is read-only (for root too): an existing directory, and one that cannot be created."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs")
    proc = train_cli("optimizer=sgd", f"data.dir={real_mnist_dir}", f"hydra.run.dir={run_dir}", *QUIET)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: cannot write {run_dir}") and "hydra.run.dir" in proc.stderr


def test_a_run_directory_that_is_a_file_is_one_line(real_mnist_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run\n")
    proc = train_cli("optimizer=sgd", f"data.dir={real_mnist_dir}", f"hydra.run.dir={tmp_path / 'notes.txt'}", *QUIET)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        f"error: {tmp_path / 'notes.txt'} is a file, not a directory (choose a run directory with hydra.run.dir=<dir>)"
    )
    assert (tmp_path / "notes.txt").read_text() == "not a run\n"


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_failed_record(real_mnist_dir, tmp_path):
    """steps.csv is /dev/full: every write to it fails with ENOSPC, as on a full disk."""
    (tmp_path / runs.STEPS_FILE).symlink_to("/dev/full")
    proc = train_cli("optimizer=sgd", f"data.dir={real_mnist_dir}", f"hydra.run.dir={tmp_path}",
                     "trainer.max_steps=50", *QUIET)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert f"cannot write {tmp_path / runs.STEPS_FILE}: No space left on device (free space" in proc.stderr
    record = json.loads((tmp_path / runs.SUMMARY_FILE).read_text())
    assert record["status"] == "failed" and "No space left" in record["error"], record


@pytest.mark.slow
def test_exact_newton_that_cannot_fit_is_refused_before_the_first_step(real_mnist_dir, tmp_path):
    """hidden=[64]: n = 50,890 and a dense n × n Hessian with its eigendecomposition needs ~100 GB.

    ``optimizer.max_params=null`` lifts the size limit, which would refuse the model first.
    """
    proc = train_cli("optimizer=newton", "model.hidden=[64]", "optimizer.max_params=null", f"data.dir={real_mnist_dir}",
                     f"hydra.run.dir={tmp_path}", *QUIET)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "n = 50,890 parameters" in proc.stderr and "GB" in proc.stderr
    assert "optimizer=hessian_free" in proc.stderr and "model.hidden" in proc.stderr
    record = json.loads((tmp_path / runs.SUMMARY_FILE).read_text())
    assert record["status"] == "failed" and "InsufficientMemory" in record["error"]
    assert runs.read_table(tmp_path / runs.STEPS_FILE)["step"].size == 0


@pytest.mark.slow
def test_cli_one_line_for_a_locked_directory(real_mnist_dir, tmp_path):
    with resources.RunDirLock(tmp_path):
        proc = train_cli("optimizer=sgd", f"data.dir={real_mnist_dir}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "in use" in proc.stderr


def test_seed_keys_never_collide():
    """Seeds are validated to 31 bits, so PRNGKey(seed) is injective with or without x64."""
    with pytest.raises(ConfigError, match="seed"):
        experiment.prepare(compose_config(["seed=1099511627776", "x64=false", "data.dir=/x"]))
    keys = {tuple(np.asarray(jax.random.key_data(jax.random.PRNGKey(s)))) for s in (0, 2**31 - 1, 12345)}
    assert len(keys) == 3


def test_an_empty_training_set_is_a_config_error(tmp_path):
    from second_order.suite.data import write_idx

    data_dir = tmp_path / "data"
    empty = np.zeros((0, 28, 28), np.uint8)
    write_idx(data_dir, "train", empty, np.zeros(0, np.uint8))
    write_idx(data_dir, "t10k", np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.uint8))
    with pytest.raises(ConfigError, match="empty"):
        experiment.run(compose_config(["optimizer=sgd", f"data.dir={data_dir}", *QUIET]), tmp_path / "run")


def test_log_lines_format_their_numbers():
    from second_order.suite.cli import _fmt

    assert _fmt(0.9335999488830566, "{:.2%}") == "93.36%"
    assert _fmt(None, "{:.4g}") == "n/a" and _fmt(float("nan"), "{:.4g}") == "n/a"
