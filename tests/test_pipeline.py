"""End to end: the Hydra app on real MNIST, every optimizer, logs, divergence, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import REPO, compose_config

from second_order.suite import experiment
from second_order.suite.tracking import runs

pytestmark = pytest.mark.slow


def train_cli(*overrides: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run scripts/train.py as a user would (a real Hydra app in a fresh process)."""
    full_env = {**os.environ, "WANDB_SILENT": "true", "WANDB_MODE": "", **(env or {})}
    full_env.pop("WANDB_MODE")
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *overrides, "trainer.progress=false"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
    )


def check_run_files(run_dir: Path) -> dict:
    for name in (runs.CONFIG_FILE, runs.ENV_FILE, runs.STEPS_FILE, runs.EVAL_FILE, runs.SUMMARY_FILE):
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    for key in (
        "train_loss",
        "test_loss",
        "test_acc",
        "steps",
        "train_time_s",
        "compile_time_s",
        "eval_time_s",
        "diverged",
    ):
        assert key in summary, key
    env = json.loads((run_dir / runs.ENV_FILE).read_text())
    assert env["packages"]["jax"] and env["device_kind"] and "git_commit" in env
    assert env["cpu_cores"] >= 1 and "cpu_model" in env  # CPU timings mean little without them
    # where it ran, in every run: all local devices by default (trainer.devices)
    assert summary["backend"] == env["backend"] and summary["device_kind"] == env["device_kind"]
    assert summary["num_devices"] == len(env["devices"]) and summary["num_processes"] == 1
    assert summary["segments"][-1]["num_devices"] == summary["num_devices"]
    return summary


def _target(name: str) -> str:
    written = yaml.safe_load((REPO / "configs" / "optimizer" / f"{name}.yaml").read_text())
    return str((written.get("optimizer") or written)["_target_"])


# Every optimizer config, found on disk: exact Newton ones on a tiny model, the others for real.
ALL_OPTIMIZERS = sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))
EXACT_NEWTON = [n for n in ALL_OPTIMIZERS if _target(n).endswith(".newton")]
OTHERS = [n for n in ALL_OPTIMIZERS if n not in EXACT_NEWTON]


@pytest.fixture(scope="module")
def short_runs(real_mnist_dir, tmp_path_factory) -> Path:
    """One Hydra multirun of 60 steps per optimizer (one process: the jobs share its start-up)."""
    sweep_dir = tmp_path_factory.mktemp("short_runs")
    proc = train_cli(
        "-m",
        f"optimizer={','.join(OTHERS)}",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=60",
        "trainer.chunk_steps=20",
        f"hydra.sweep.dir={sweep_dir}",
        "logger.wandb.mode=offline",
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.parametrize("name", OTHERS)
def test_short_run_decreases_loss_and_writes_logs(name, short_runs):
    (run_dir,) = {p.parent for p in (short_runs / name).rglob(runs.SUMMARY_FILE)}
    summary = check_run_files(run_dir)
    assert summary["status"] == "budget" and summary["steps"] == 60 and not summary["diverged"]
    run = runs.load_run(run_dir)
    loss = run.steps["train_loss"]
    assert len(loss) == 60 and np.array_equal(run.steps["step"], np.arange(1, 61))
    assert loss[-10:].mean() < loss[:10].mean() - 0.3, loss
    assert np.all(np.diff(run.steps["time_s"]) > 0)
    assert summary["compile_time_s"] > 0 and summary["train_time_s"] > 0
    if "cg_iterations" in run.steps:
        assert np.all(run.steps["cg_iterations"] >= 1)
    # W&B's own offline files hold the same per-step losses as the local CSV.
    from second_order.suite.tracking.wandb_io import read_offline_runs

    record = read_offline_runs(run_dir)
    wb_loss = np.array([r["train/loss"] for r in record.history if "train/loss" in r])
    np.testing.assert_array_equal(wb_loss, loss)
    assert record.group == "default" and name in record.tags


def test_jobs_of_the_basic_launcher_ran_one_after_another(short_runs):
    """Their records show it (summary segments' started_at / ended_at), so a report can check it."""
    from second_order.suite.report.loading import load_runs
    from second_order.suite.report.overlaps import overlaps, timed

    found = load_runs([short_runs])
    assert len(found) == len(OTHERS) and all(timed(r) for r in found)
    assert overlaps(found) == []


@pytest.mark.parametrize("name", EXACT_NEWTON)
def test_exact_newton_runs(name, real_mnist_dir, tmp_path):
    run_dir = tmp_path / name
    proc = train_cli(
        f"optimizer={name}",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=3",
        "model.hidden=[2]",
        f"hydra.run.dir={run_dir}",
        "logger.wandb.mode=disabled",
    )
    assert proc.returncode == 0, proc.stderr
    summary = check_run_files(run_dir)
    assert summary["steps"] == 3 or summary["diverged"]
    run = runs.load_run(run_dir)
    assert "solve_path" in run.steps and len(run.steps["train_loss"]) == summary["steps"]
    # Rank of H at hidden width 2 (~400 measured, ≤ 64·(10 + 2·2) = 896) is below max_rank 640 < n = 1600.
    assert np.all(run.steps["solve_path"] == 2)


def test_divergence_stops_cleanly_and_keeps_logs(real_mnist_dir, tmp_path):
    run_dir = tmp_path / "div"
    proc = train_cli(
        "optimizer=sgd",
        "optimizer.learning_rate=1000",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=300",
        f"hydra.run.dir={run_dir}",
        "logger.wandb.mode=offline",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged"] is True and summary["status"] == "diverged"
    steps = runs.read_table(run_dir / runs.STEPS_FILE)
    assert summary["diverged_step"] == len(steps["step"]) < 300
    assert not np.isfinite(steps["train_loss"][-1]) and np.all(np.isfinite(steps["train_loss"][:-2]))
    from second_order.suite.tracking.wandb_io import read_offline_runs

    assert read_offline_runs(run_dir).summary["diverged"] is True


def test_same_seed_gives_bitwise_identical_losses(real_mnist_dir, tmp_path):
    overrides = [
        "optimizer=hessian_free",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=40",
        "trainer.chunk_steps=20",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    for name in ("a", "b"):
        experiment.run(compose_config(overrides), tmp_path / name)
    a = (tmp_path / "a" / runs.STEPS_FILE).read_text().splitlines()
    b = (tmp_path / "b" / runs.STEPS_FILE).read_text().splitlines()
    column = lambda lines: [line.split(",")[2] for line in lines]  # train_loss, as written
    assert column(a) == column(b) and len(a) == 41
    experiment.run(compose_config(overrides + ["seed=1"]), tmp_path / "c")
    assert column((tmp_path / "c" / runs.STEPS_FILE).read_text().splitlines()) != column(a)


def test_bad_value_is_one_line_no_traceback(tmp_path):
    proc = train_cli("optimizer=hessian_free", "optimizer.damping=-1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: optimizer.damping = -1 is invalid: must be >= 0"], proc.stderr
    assert not (tmp_path / "steps.csv").exists()


def test_hydra_output_subdir_is_refused_before_hydra_writes_anything(tmp_path):
    """Hydra would write its record there before the job, also into a directory that then refuses it."""
    proc = train_cli("hydra.output_subdir=.hydra", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: hydra.output_subdir cannot be set: scripts/train.py writes Hydra's record")
    assert not (tmp_path / "run").exists()


def test_cfg_with_multirun_is_one_line_that_says_to_drop_m():
    proc = train_cli("-m", "hydra/launcher=slurm_gpu", "--cfg", "hydra")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: --cfg and -m cannot be combined") and "drop -m" in line, line
    # what the line says to run, verbatim (conftest's SECOND_ORDER_NO_LOCAL_CONFIG adds ~local among the overrides)
    shown = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "hydra/launcher=slurm_gpu", "--cfg", "hydra"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0 and "signal_delay_s" in shown.stdout, shown.stderr[-2000:]


def test_unknown_optimizer_names_the_choices(tmp_path):
    proc = train_cli("optimizer=no_such_method", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "optimizer/no_such_method" in proc.stderr and "hessian_free" in proc.stderr


def test_missing_data_dir_is_a_clear_error(tmp_path):
    proc = train_cli(f"data.dir={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nope") in proc.stderr


def test_existing_run_dir_needs_resume(real_mnist_dir, tmp_path):
    overrides = [
        "optimizer=sgd",
        f"data.dir={real_mnist_dir}",
        "trainer.max_steps=5",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    experiment.run(compose_config(overrides), tmp_path)
    with pytest.raises(Exception, match="trainer.resume=true"):
        experiment.run(compose_config(overrides), tmp_path)


def test_a_refused_job_leaves_the_hydra_record_of_the_run_it_found(real_mnist_dir, tmp_path):
    """Hydra would write .hydra/ before the job starts; the refused second job must not rewrite
    the first run's record (max_steps is not part of the directory name, so both share it)."""
    common = ["optimizer=sgd", f"data.dir={real_mnist_dir}", "logger.wandb.mode=disabled", f"hydra.run.dir={tmp_path}"]
    assert train_cli(*common, "trainer.max_steps=5").returncode == 0
    record = {p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir()}
    assert sorted(record) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "trainer.max_steps=5" in yaml.safe_load(record["overrides.yaml"])
    assert yaml.safe_load(record["hydra.yaml"])["hydra"]["runtime"]["output_dir"] == str(tmp_path)
    for refused in (["trainer.max_steps=7"], ["trainer.max_steps=5", "trainer.batch_size=100"]):
        proc = train_cli(*common, *refused)
        assert proc.returncode == 2 and "holds" in proc.stderr, proc.stderr[-2000:]
        assert {p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir()} == record
    resumed = train_cli(*common, "trainer.max_steps=7", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trainer.max_steps=7" in yaml.safe_load((tmp_path / ".hydra" / "overrides.yaml").read_text())


def test_figures_from_wandb_offline_files_match_local(real_mnist_dir, tmp_path, capsys):
    """Plot from the files W&B itself wrote: same numbers as from the local CSVs."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_figures

    root = tmp_path / "runs"
    for name in ("sgd", "gauss_newton"):
        experiment.run(
            compose_config(
                [
                    f"optimizer={name}",
                    f"data.dir={real_mnist_dir}",
                    "trainer.max_steps=40",
                    "trainer.chunk_steps=20",
                    "logger.wandb.mode=offline",
                    "trainer.progress=false",
                ]
            ),
            root / name,
        )
    assert make_figures.main([str(root), "--out", str(tmp_path / "local")]) == 0
    assert make_figures.main(["--wandb-offline", str(root), "--out", str(tmp_path / "wb")]) == 0
    # both at once (the run files and their W&B copies): each run is drawn once
    assert make_figures.main([str(root), "--wandb-offline", str(root), "--out", str(tmp_path / "both")]) == 0
    assert "2 run(s) were read twice" in capsys.readouterr().err
    for table in ("table2_train_loss.csv", "table3_test_accuracy.csv"):
        assert (tmp_path / "wb" / table).read_text() == (tmp_path / "local" / table).read_text()
        assert (tmp_path / "both" / table).read_text() == (tmp_path / "local" / table).read_text()
    assert (tmp_path / "wb" / "fig11_acc_vs_epoch_gauss_newton.png").stat().st_size > 0
    converted = runs.load_run(tmp_path / "wb" / "runs" / "wandb" / "offline" / "gauss_newton")
    np.testing.assert_array_equal(
        converted.steps["train_loss"], runs.load_run(root / "gauss_newton").steps["train_loss"]
    )


def test_paper_precision_newton_runs_float64_parameters(real_mnist_dir, tmp_path):
    """The paper's exact-Newton precision: step 0 in float32, float64 parameters afterwards."""
    cfg = compose_config(["optimizer=newton_paper_precision", f"data.dir={real_mnist_dir}", "trainer.max_steps=3",
                          "model.hidden=[2]",  # the dtypes do not depend on the width: 1,600 parameters
                          "logger.wandb.mode=disabled", "trainer.progress=false"])  # fmt: skip
    assert cfg["model"]["param_dtype"] == "float64" and cfg["optimizer"]["first_step_dtype"] == "float32"
    summary = experiment.run(cfg, tmp_path)
    assert summary["steps"] == 3 and summary["status"] == "budget"
    from second_order.suite.training import checkpoint

    d = checkpoint.latest(tmp_path)
    assert d is not None
    import flax.serialization

    state = flax.serialization.msgpack_restore((d / checkpoint.STATE_FILE).read_bytes())
    assert {str(v.dtype) for v in jax.tree_util.tree_leaves(state["params"])} == {"float64"}


def test_float64_parameters_need_x64():
    with pytest.raises(Exception, match="model.param_dtype"):
        experiment.prepare(compose_config(["model.param_dtype=float64", "x64=false", "data.dir=/x"]))
