"""Runs that cannot be corrupted: atomic checkpoints, refused resumes, torn rows, segments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, compose_config

from second_order.suite import experiment
from second_order.suite.config import ConfigError
from second_order.suite.tracking import runs
from second_order.suite.training import checkpoint

# --------------------------------------------------------------------------- checkpoints

SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from second_order.suite.training import checkpoint
    run_dir = sys.argv[1]
    step = first = checkpoint.latest_step(run_dir)  # as a resumed run: continue from the last commit
    while True:
        step += 1
        params = {"w": np.full(2000, float(step)), "b": {"c": np.full(3, float(step))}}
        checkpoint.save(run_dir, params, {"count": np.int32(step)}, {"step": step, "clock": {"train": step}})
        if step == first + 1:
            print("saving", flush=True)
""")


def test_checkpoint_killed_at_any_instant_is_old_or_new_never_mixed(tmp_path):
    template = ({"w": np.zeros(2000), "b": {"c": np.zeros(3)}}, {"count": np.int32(0)})
    last = 0
    steps_seen = []
    for delay in (0.0, 0.001, 0.002, 0.003, 0.005, 0.008, 0.013, 0.021, 0.034):  # kill -9 at many instants
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"saving\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not checkpoint.exists(tmp_path):
            continue
        params, opt_state, meta = checkpoint.load(tmp_path, *template)
        step = meta["step"]
        assert np.all(params["w"] == step) and np.all(params["b"]["c"] == step) and int(opt_state["count"]) == step
        assert step >= last, "a kill lost committed progress"
        last = step
        steps_seen.append(step)
    assert last > 1, "no checkpoint after the first was ever committed: the test did not test anything"


def test_checkpoint_ignores_uncommitted_directories(tmp_path):
    params = {"w": np.arange(3.0)}
    checkpoint.save(tmp_path, params, {"n": np.int32(1)}, {"step": 5, "clock": {}})
    torn = tmp_path / checkpoint.DIR / ".tmp-step_000000009-123"
    torn.mkdir()
    (torn / checkpoint.STATE_FILE).write_bytes(b"\x00garbage")
    assert checkpoint.latest_step(tmp_path) == 5
    _, _, meta = checkpoint.load(tmp_path, params, {"n": np.int32(0)})
    assert meta["step"] == 5
    checkpoint.save(tmp_path, params, {"n": np.int32(1)}, {"step": 7, "clock": {}})
    names = sorted(p.name for p in (tmp_path / checkpoint.DIR).iterdir())
    assert names == ["step_000000007-0"]
    checkpoint.save(tmp_path, params, {"n": np.int32(2)}, {"step": 7, "clock": {}})  # the same step again
    assert sorted(p.name for p in (tmp_path / checkpoint.DIR).iterdir()) == [
        "step_000000007-1"
    ]  # older and uncommitted ones are gone after a commit


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "no_meta"])
def test_unusable_checkpoint_names_the_file(tmp_path, damage):
    params = {"w": np.arange(300.0)}
    d = checkpoint.save(tmp_path, params, {"n": np.int32(1)}, {"step": 3, "clock": {}})
    state = d / checkpoint.STATE_FILE
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage":
        state.write_bytes(os.urandom(64))
    elif damage == "empty":
        state.write_bytes(b"")
    else:
        (d / checkpoint.META_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(tmp_path, params, {"n": np.int32(0)})
    assert str(d) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- CSV rows


def test_run_files_are_replaced_durably(tmp_path, monkeypatch):
    """summary.json, text files and a rewound CSV are renamed into place, then their
    directory is fsynced (the rename itself must survive a power loss)."""
    synced: list[bool] = []
    fsync = os.fsync

    def spy(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    for write in (
        lambda: runs.write_json(tmp_path / runs.SUMMARY_FILE, {"status": "running"}),
        lambda: runs.write_text(tmp_path / runs.CONFIG_FILE, "seed: 0\n"),
        lambda: runs.truncate_after_step(tmp_path / runs.STEPS_FILE, 1),
    ):
        (tmp_path / runs.STEPS_FILE).write_text("step,epoch,train_loss,time_s\r\n1,0,2.3,0.1\r\n2,0,2.2,0.2\r\n")
        synced.clear()
        write()
        assert synced == [False, True], synced  # the file's data, then its directory
    assert runs.read_table(tmp_path / runs.STEPS_FILE)["step"].tolist() == [1.0]


def test_torn_last_row_is_dropped_by_readers_and_by_resume(tmp_path):
    path = tmp_path / runs.STEPS_FILE
    path.write_text("step,epoch,train_loss,time_s\r\n1,0,2.3,0.1\r\n2,0,2.2,0.2\r\n3,0,2.")
    with pytest.warns(UserWarning, match="torn"):
        table = runs.read_table(path)
    np.testing.assert_array_equal(table["step"], [1, 2])
    path.write_text("step,epoch,train_loss,time_s\r\n1,0,2.3,0.1\r\n2,0\r\n")  # a short row
    with pytest.warns(UserWarning, match="torn"):
        assert len(runs.read_table(path)["step"]) == 1
    path.write_text("step,epoch,train_loss,time_s\r\n1,0,2.3,0.1\r\n2,0,2.2,0.2\r\n3,0,2.")
    runs.truncate_after_step(path, 10)
    assert path.read_bytes() == b"step,epoch,train_loss,time_s\r\n1,0,2.3,0.1\r\n2,0,2.2,0.2\r\n"


def test_torn_header_starts_the_table_again(tmp_path):
    path = tmp_path / runs.EVAL_FILE
    path.write_text("epoch,st")
    log = runs.CsvLog(path, runs.EVAL_COLUMNS)
    log.write_rows([(1, 937, 1.0, 0.5, 0.9)])
    log.close()
    assert path.read_text().splitlines() == [",".join(runs.EVAL_COLUMNS), "1,937,1.0,0.5,0.9"]


# --------------------------------------------------------------------------- resume


def fake_run_dir(tmp_path: Path, overrides: list[str]) -> Path:
    cfg = compose_config(overrides)
    (tmp_path / runs.CONFIG_FILE).write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "hydra"}))
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"status": "interrupted"})
    return tmp_path


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_of_another_configuration_is_refused_naming_the_keys(tmp_path, resume):
    base = ["optimizer=hessian_free", "data.dir=/nonexistent"]
    run_dir = fake_run_dir(tmp_path, base + ["optimizer.damping=1"])
    with pytest.raises(ConfigError) as err:
        experiment.run(compose_config(base + ["optimizer.damping=4", f"trainer.resume={resume}"]), run_dir)
    message = str(err.value)
    assert "optimizer.damping" in message and "trainer.resume=true" not in message
    with pytest.raises(ConfigError, match="optimizer._target_.*optimizer.name"):
        experiment.run(compose_config(["optimizer=sgd", "data.dir=/nonexistent", "trainer.resume=true"]), run_dir)


def test_budgets_and_bookkeeping_may_change_on_resume():
    old = compose_config(["optimizer=sgd"])
    new = compose_config(
        [
            "optimizer=sgd",
            "trainer.max_steps=9",
            "trainer.max_time_s=3",
            "trainer.resume=true",
            "logger.wandb.mode=disabled",
            "data.dir=/elsewhere",
            "trainer.progress=false",
        ]
    )
    assert experiment.config_differences(old, new) == []
    assert experiment.config_differences(old, compose_config(["optimizer=sgd", "seed=1"])) == ["seed"]


def test_single_runs_with_different_overrides_never_share_a_directory():
    from hydra import compose, initialize_config_dir

    dirs = set()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for damping in (1, 4):
            cfg = compose(
                "config", overrides=["optimizer=hessian_free", f"optimizer.damping={damping}"], return_hydra_config=True
            )
            from hydra.core.hydra_config import HydraConfig

            HydraConfig.instance().set_config(cfg)
            dirs.add(str(cfg.hydra.run.dir))
    assert len(dirs) == 2, dirs


SMALL = ["optimizer=sgd", "trainer.chunk_steps=10", "logger.wandb.mode=disabled", "trainer.progress=false"]


CURVATURE = [  # the cheapest in-loop measurement: one matrix, a few products
    "diagnostics=curvature",
    "diagnostics.every_steps=20",
    "diagnostics.matrices=[hessian]",
    "diagnostics.lanczos_steps=4",
    "diagnostics.top_k=1",
    "diagnostics.trace_probes=1",
    "diagnostics.slq_probes=1",
    "diagnostics.slq_steps=4",
]


@pytest.mark.slow
def test_resume_without_checkpoint_does_not_duplicate_rows(real_mnist_dir, tmp_path):
    overrides = SMALL + CURVATURE + [f"data.dir={real_mnist_dir}", "trainer.max_steps=30"]
    experiment.run(compose_config(overrides), tmp_path)
    import shutil

    shutil.rmtree(tmp_path / checkpoint.DIR)  # as if killed before its first checkpoint
    experiment.run(compose_config(overrides + ["trainer.resume=true"]), tmp_path)
    steps = runs.read_table(tmp_path / runs.STEPS_FILE)["step"]
    np.testing.assert_array_equal(steps, np.arange(1, 31))
    np.testing.assert_array_equal(runs.read_table(tmp_path / runs.CURVATURE_FILE)["step"], [0, 20, 30])


@pytest.mark.slow
def test_a_kill_between_the_final_evaluation_and_checkpoint_logs_them_once(real_mnist_dir, tmp_path, monkeypatch):
    """A budget run checkpoints at its last step S inside the loop, then evaluates and measures
    at S and checkpoints again: killed in between, the resume must redo that evaluation and
    measurement once, not keep the first and add a second."""
    from second_order.suite.tracking.run_logger import RunLogger

    budget = ["trainer.max_steps=30", "trainer.checkpoint_every_s=0"]
    overrides = SMALL + CURVATURE + [f"data.dir={real_mnist_dir}", *budget]
    log_curvature = RunLogger.log_curvature

    def killed_after_the_last_measurement(self, step, *args, **kwargs):
        log_curvature(self, step, *args, **kwargs)
        if step == 30:
            raise RuntimeError("killed")

    monkeypatch.setattr(RunLogger, "log_curvature", killed_after_the_last_measurement)
    with pytest.raises(RuntimeError, match="killed"):
        experiment.run(compose_config(overrides), tmp_path)
    assert list(runs.read_table(tmp_path / runs.EVAL_FILE)["step"]) == [30]  # logged after the last checkpoint
    assert checkpoint.latest_step(tmp_path) == 30
    monkeypatch.undo()
    summary = experiment.run(compose_config(overrides + ["trainer.resume=true"]), tmp_path)
    assert summary["status"] == "budget"
    assert list(runs.read_table(tmp_path / runs.EVAL_FILE)["step"]) == [30]
    assert list(runs.read_table(tmp_path / runs.CURVATURE_FILE)["step"]) == [0, 20, 30]
    np.testing.assert_array_equal(runs.read_table(tmp_path / runs.STEPS_FILE)["step"], np.arange(1, 31))


@pytest.mark.slow
def test_resume_keeps_config_and_records_every_segment(real_mnist_dir, tmp_path):
    overrides = SMALL + [f"data.dir={real_mnist_dir}"]
    experiment.run(compose_config(overrides + ["trainer.max_steps=20"]), tmp_path)
    config_before = (tmp_path / runs.CONFIG_FILE).read_text()
    with open(tmp_path / runs.STEPS_FILE, "a") as f:
        f.write("21,0,2.")  # a torn row left by a kill
    summary = experiment.run(compose_config(overrides + ["trainer.max_steps=40", "trainer.resume=true"]), tmp_path)
    assert (tmp_path / runs.CONFIG_FILE).read_text() == config_before
    env = json.loads((tmp_path / runs.ENV_FILE).read_text())
    assert [s["start_step"] for s in env["segments"]] == [0, 20]
    assert [(s["start_step"], s["end_step"]) for s in summary["segments"]] == [(0, 20), (20, 40)]
    np.testing.assert_array_equal(runs.read_table(tmp_path / runs.STEPS_FILE)["step"], np.arange(1, 41))
    assert summary["protocol_steps"] == summary["epochs"] * summary["steps_per_epoch"]
    assert summary["steps_per_epoch"] == summary["train_examples"] // summary["batch_size"]


@pytest.mark.slow
def test_missing_data_fails_when_ci_requires_it(tmp_path):
    def run_data_test(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_data.py::test_real_mnist"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    env = {**os.environ, "MNIST_DIR": str(tmp_path / "absent"), "SECOND_ORDER_REQUIRE_DATA": "1"}
    proc = run_data_test(env)
    assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout[-2000:]
    env.pop("SECOND_ORDER_REQUIRE_DATA")
    proc = run_data_test(env)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_failed_resume_leaves_the_record_as_it_was(real_mnist_dir, tmp_path):
    overrides = SMALL + [f"data.dir={real_mnist_dir}", "trainer.max_steps=20"]
    experiment.run(compose_config(overrides), tmp_path)
    summary = tmp_path / runs.SUMMARY_FILE
    record = json.loads(summary.read_text())
    record["status"] = "interrupted"
    runs.write_json(summary, record)
    before = summary.read_text()
    latest = checkpoint.latest(tmp_path)
    assert latest is not None
    (latest / checkpoint.STATE_FILE).write_bytes(b"\x93garbage")
    with pytest.raises(checkpoint.CheckpointError, match=str(latest)):
        experiment.run(compose_config(overrides + ["trainer.resume=true", "trainer.max_steps=40"]), tmp_path)
    assert summary.read_text() == before


@pytest.mark.parametrize("status", ["completed", "budget", "diverged"])
def test_rerunning_a_sweep_never_marks_a_finished_job_failed(tmp_path, status):
    from omegaconf import OmegaConf

    from second_order.suite.cli import record_failure

    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"optimizer": "sgd", "seed": 0, "status": status})
    cfg = OmegaConf.create({"optimizer": {"name": "sgd"}, "seed": 0})
    record_failure(tmp_path, cfg, "run directory already holds this run")
    assert json.loads((tmp_path / runs.SUMMARY_FILE).read_text())["status"] == status
    # an interrupted run stays resumable: a job that fails before it starts (a bad value on the
    # command line, missing data) is not that run's failure
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"optimizer": "sgd", "seed": 0, "status": "interrupted"})
    record_failure(tmp_path, cfg, "boom")
    assert json.loads((tmp_path / runs.SUMMARY_FILE).read_text())["status"] == "interrupted"
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"optimizer": "sgd", "seed": 0, "status": "running"})
    record_failure(tmp_path, cfg, "boom")  # a stale "running" (its process was killed) is never left behind
    assert json.loads((tmp_path / runs.SUMMARY_FILE).read_text())["status"] == "failed"


def test_a_failed_sweep_job_never_rewrites_a_record_it_does_not_own(tmp_path):
    """A refusal (the directory is locked, or holds a run this job may not continue) writes
    nothing; a failure recorded into a directory keeps the optimizer and seed it names."""
    from omegaconf import OmegaConf

    from second_order.suite.cli import record_failure, refused
    from second_order.suite.training.resources import RunDirBusy, RunDirLock

    assert refused(experiment.RunDirTaken("x")) and refused(RunDirBusy("x")) and not refused(ConfigError("x"))
    with pytest.raises(experiment.RunDirTaken, match="another configuration"):
        runs.write_text(tmp_path / runs.CONFIG_FILE, yaml.safe_dump({"optimizer": {"name": "sgd"}, "seed": 0}))
        experiment.check_run_dir(tmp_path, {"optimizer": {"name": "adam"}, "seed": 3}, resume=False)
    live = {"optimizer": "sgd", "seed": 0, "status": "running"}
    runs.write_json(tmp_path / runs.SUMMARY_FILE, live)
    cfg = OmegaConf.create({"optimizer": {"name": "adam"}, "seed": 3})
    with RunDirLock(tmp_path):  # a live run holds the directory
        record_failure(tmp_path, cfg, "boom")
    assert runs.read_summary(tmp_path) == live
    record_failure(tmp_path, cfg, "boom")
    assert runs.read_summary(tmp_path) == {**live, "status": "failed", "error": "boom"}


@pytest.mark.slow
def test_a_requeued_job_killed_before_its_first_checkpoint_starts_again(real_mnist_dir, tmp_path, monkeypatch):
    """SLURM requeued the job (SLURM_RESTART_COUNT > 0) of a run killed while ``running`` and
    before any checkpoint: the same command must start it afresh, not refuse the directory."""
    import shutil

    overrides = SMALL + [f"data.dir={real_mnist_dir}", "trainer.max_steps=20"]
    experiment.run(compose_config(overrides), tmp_path)
    shutil.rmtree(tmp_path / checkpoint.DIR)
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {**runs.read_summary(tmp_path), "status": "running"})
    with pytest.raises(ConfigError, match="already holds this run"):
        experiment.run(compose_config(overrides), tmp_path)  # not requeued: refused, as before
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    summary = experiment.run(compose_config(overrides), tmp_path)
    assert summary["status"] == "budget" and summary["steps"] == 20
    np.testing.assert_array_equal(runs.read_table(tmp_path / runs.STEPS_FILE)["step"], np.arange(1, 21))
    assert list(runs.read_table(tmp_path / runs.EVAL_FILE)["step"]) == [20]


@pytest.mark.slow
def test_a_resume_with_a_larger_budget_logs_what_one_longer_run_logs(real_mnist_dir, tmp_path, monkeypatch):
    """The budget end's evaluation and measurement (step 25) are redone elsewhere by a resume
    that goes on to 45; the summary says running without results while it runs, and its
    budget is the resumed one (config.yaml keeps the first)."""
    from second_order.suite.report import runinfo
    from second_order.suite.tracking.run_logger import RunLogger

    overrides = SMALL + CURVATURE + [f"data.dir={real_mnist_dir}"]
    experiment.run(compose_config(overrides + ["trainer.max_steps=45"]), tmp_path / "straight")
    experiment.run(compose_config(overrides + ["trainer.max_steps=25"]), tmp_path / "resumed")
    seen: list[dict] = []
    log_steps = RunLogger.log_steps

    def spy(self, *args, **kwargs):
        seen.append(runs.read_summary(self.run_dir) or {})
        return log_steps(self, *args, **kwargs)

    monkeypatch.setattr(RunLogger, "log_steps", spy)
    summary = experiment.run(
        compose_config(overrides + ["trainer.max_steps=45", "trainer.resume=true"]), tmp_path / "resumed"
    )
    assert seen[0]["status"] == "running" and "test_acc" not in seen[0] and "steps" not in seen[0]
    for name in (runs.EVAL_FILE, runs.CURVATURE_FILE, runs.STEPS_FILE):
        a, b = (runs.read_table(tmp_path / d / name)["step"] for d in ("straight", "resumed"))
        np.testing.assert_array_equal(b, a, err_msg=name)
    assert list(runs.read_table(tmp_path / "resumed" / runs.CURVATURE_FILE)["step"]) == [0, 20, 40, 45]
    assert summary["max_steps"] == 45
    assert runinfo.budget(runs.load_run(tmp_path / "resumed")) == "max steps 45"


@pytest.mark.slow
def test_a_resume_that_fails_after_checkpointing_is_recorded_failed(real_mnist_dir, tmp_path, monkeypatch):
    """Only a resume that fails before it checkpoints anything new restores the record it found."""
    from second_order.suite.tracking.run_logger import RunLogger

    overrides = SMALL + [f"data.dir={real_mnist_dir}", "trainer.checkpoint_every_s=0"]
    experiment.run(compose_config(overrides + ["trainer.max_steps=20"]), tmp_path)
    log_steps = RunLogger.log_steps

    def disk_fails_at_step_40(self, steps, *args, **kwargs):
        if steps[-1] >= 40:
            raise OSError("disk failed")
        return log_steps(self, steps, *args, **kwargs)

    monkeypatch.setattr(RunLogger, "log_steps", disk_fails_at_step_40)
    with pytest.raises(OSError, match="disk failed"):
        experiment.run(compose_config(overrides + ["trainer.max_steps=60", "trainer.resume=true"]), tmp_path)
    summary = runs.read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["error"] == "OSError: disk failed"
    assert [(s["start_step"], s["end_step"]) for s in summary["segments"]] == [(0, 20), (20, 30)]
    assert "test_acc" not in summary and summary["max_steps"] == 60


@pytest.mark.slow
def test_a_resume_with_no_budget_left_leaves_the_run_untouched(real_mnist_dir, tmp_path):
    """``make reproduce`` again over runs that ended on their step or time budget: every file
    stays byte for byte (no empty segment in summary.json or environment.json); a larger
    budget goes on."""
    from second_order.suite.config import TrainerConfig
    from second_order.suite.training.stop import budget_spent

    overrides = SMALL + [f"data.dir={real_mnist_dir}", "trainer.resume=true"]
    first = experiment.run(compose_config(overrides + ["trainer.max_steps=20"]), tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert runs.ENV_FILE in files and runs.SUMMARY_FILE in files
    again = experiment.run(compose_config(overrides + ["trainer.max_steps=20"]), tmp_path)
    assert again == first and {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files
    longer = experiment.run(compose_config(overrides + ["trainer.max_steps=30"]), tmp_path)
    assert longer["steps"] == 30 and [s["start_step"] for s in longer["segments"]] == [0, 20]

    budget = {"status": "budget", "train_time_s": 2.0}
    trainer = TrainerConfig(epochs=1, max_steps=None, max_time_s=2.0)
    assert budget_spent(budget, trainer, start=10, per_epoch=100)  # its time budget is spent
    assert not budget_spent(budget, TrainerConfig(epochs=1, max_time_s=3.0), start=10, per_epoch=100)
    assert not budget_spent({**budget, "status": "interrupted"}, trainer, start=10, per_epoch=100)
