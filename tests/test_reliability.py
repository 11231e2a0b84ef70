"""Interruption and resume, sweeps that survive a bad job, W&B faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_config
from test_pipeline import train_cli

from second_order.suite import experiment
from second_order.suite.sweep import JOBS_FAILED, run_multirun
from second_order.suite.tracking import runs
from second_order.suite.training import checkpoint

pytestmark = pytest.mark.slow


def losses_as_written(run_dir: Path) -> list[str]:
    lines = (run_dir / runs.STEPS_FILE).read_text().splitlines()[1:]
    return [line.split(",")[2] for line in lines]


def evals_as_written(run_dir: Path) -> list[list[str]]:
    """eval.csv rows without the time column (epoch, step, test_loss, test_acc)."""
    lines = (run_dir / runs.EVAL_FILE).read_text().splitlines()[1:]
    return [[f for i, f in enumerate(line.split(",")) if i != 2] for line in lines]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_then_resume_matches_uninterrupted_run(sig, real_mnist_dir, tmp_path):
    common = [
        "optimizer=hessian_free",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=1500",
        "trainer.chunk_steps=1",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *common, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steps_file = run_dir / runs.STEPS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if steps_file.exists() and steps_file.read_text().count("\n") > 30:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    summary = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig
    stopped_at = summary["steps"]
    assert 30 <= stopped_at < 1500, "interrupt arrived too late to test resuming"
    assert len(losses_as_written(run_dir)) == stopped_at  # every step run is logged
    assert checkpoint.exists(run_dir)

    resumed = train_cli(*common, f"hydra.run.dir={run_dir}", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / runs.SUMMARY_FILE).read_text())["steps"] == 1500

    reference = tmp_path / "reference"
    experiment.run(compose_config(common), reference)
    assert losses_as_written(run_dir) == losses_as_written(reference)  # bitwise, as written
    assert evals_as_written(run_dir) == evals_as_written(reference)  # no extra row at the interruption


def test_resume_of_a_finished_run_changes_nothing(real_mnist_dir, tmp_path):
    overrides = [
        "optimizer=sgd",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=50",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    experiment.run(compose_config(overrides), tmp_path)
    before = losses_as_written(tmp_path)
    summary = experiment.run(compose_config(overrides + ["trainer.resume=true"]), tmp_path)
    assert summary["steps"] == 50 and losses_as_written(tmp_path) == before


def test_sweep_survives_failing_and_diverging_jobs(real_mnist_dir, tmp_path):
    older = tmp_path / "adam" / "seed0"  # an earlier run in the same folder: not a job of this sweep
    older.mkdir(parents=True)
    (older / "summary.json").write_text('{"status": "failed", "optimizer": "adam", "seed": 0}')
    proc = train_cli(
        "-m",
        "optimizer=sgd",
        "optimizer.learning_rate=0.1,-1,1000",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=100",
        f"hydra.sweep.dir={tmp_path}",
        "logger.wandb.mode=disabled",
    )
    assert proc.returncode == JOBS_FAILED, proc.stderr  # the failed job, seen by scripts and CI (diverged is not)
    assert "error: 1 of 3 sweep jobs failed, e.g. " in proc.stderr and "optimizer.learning_rate" in proc.stderr
    jobs = json.loads((tmp_path / "sweep_summary.json").read_text())["jobs"]
    by_lr = {j["run_dir"].rsplit("=", 1)[-1]: j for j in jobs}
    assert set(by_lr) == {"0.1", "-1", "1000"} and len(jobs) == 3, jobs
    assert "sweep: 3 jobs, 2 not completed" in proc.stdout  # the failed and the diverged one
    assert not (tmp_path / ".sweep_jobs").exists()
    assert by_lr["0.1"]["status"] == "budget"
    assert by_lr["-1"]["status"] == "failed" and "optimizer.learning_rate" in by_lr["-1"]["error"]
    assert by_lr["1000"]["status"] == "diverged"
    # every job directory says what was asked, the failed one too (written by the job, see cli.save_hydra_record)
    for lr, job in by_lr.items():
        overrides = (tmp_path / job["run_dir"] / ".hydra" / "overrides.yaml").read_text()
        assert f"optimizer.learning_rate={lr}" in overrides, lr


def test_callers_of_a_sweep_go_on_past_failed_jobs_but_not_past_other_failures(tmp_path):
    """reproduce and the study read every job's record after a sweep: exit 3 (jobs failed) is theirs to report."""
    exits = lambda code: [sys.executable, "-c", f"import sys; sys.exit({code})"]  # noqa: E731
    run_multirun(exits(0), cwd=tmp_path)
    run_multirun(exits(JOBS_FAILED), cwd=tmp_path)
    for code in (1, 2, 130):
        with pytest.raises(subprocess.CalledProcessError) as raised:
            run_multirun(exits(code), cwd=tmp_path)
        assert raised.value.returncode == code


def test_wandb_online_failure_degrades_to_warning(real_mnist_dir, tmp_path):
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_SILENT": "true"}
    proc = train_cli(
        "optimizer=sgd",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=30",
        f"hydra.run.dir={tmp_path}",
        "logger.wandb.mode=online",
        "logger.wandb.init_timeout_s=3",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "W&B logging disabled" in proc.stderr
    assert len(losses_as_written(tmp_path)) == 30
    assert json.loads((tmp_path / runs.SUMMARY_FILE).read_text())["status"] == "budget"


def test_resuming_a_budget_limited_run_keeps_its_budget(real_mnist_dir, tmp_path):
    overrides = [
        "optimizer=sgd",
        f"data.dir={real_mnist_dir}",
        "trainer.chunk_steps=1",
        "trainer.max_time_s=0.000001",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    first = experiment.run(compose_config(overrides), tmp_path)
    assert first["status"] == "budget" and first["steps"] == 1
    again = experiment.run(compose_config(overrides + ["trainer.resume=true"]), tmp_path)
    assert again["status"] == "budget" and again["steps"] == 1 and len(losses_as_written(tmp_path)) == 1
    longer = experiment.run(
        compose_config(
            overrides[:3]
            + ["trainer.max_steps=5", "logger.wandb.mode=disabled", "trainer.progress=false", "trainer.resume=true"]
        ),
        tmp_path,
    )
    assert longer["steps"] == 5 and len(losses_as_written(tmp_path)) == 5
