"""diagnostics=curvature end to end: schedule, own clock, untouched training, resume, W&B, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config
from test_pipeline import train_cli

from second_order.suite import experiment
from second_order.suite.config import ConfigError, validate
from second_order.suite.spectrum import is_summary_column
from second_order.suite.tracking import runs
from second_order.suite.training.clock import Clock
from second_order.suite.training.probe import TimedProbe

SIZES = [
    "diagnostics.every_steps=50",
    "diagnostics.lanczos_steps=10",
    "diagnostics.trace_probes=4",
    "diagnostics.slq_probes=2",
    "diagnostics.slq_steps=8",
]
BASE = ["optimizer=hessian_free", "trainer.chunk_steps=25", "trainer.progress=false", "logger.wandb.mode=disabled"]


def test_schedule_restarts_every_epoch_and_cuts_chunks_at_due_steps():
    probe = TimedProbe(lambda *a: {}, every_steps=100, clock=Clock())
    due = [s for s in range(0, 2 * 937 + 1) if probe.due(s, 937)]
    assert due[:3] == [0, 100, 200] and due[9:12] == [900, 937, 1037] and due[-1] == 1874
    assert probe.next_due(0, 937) == 100 and probe.next_due(900, 937) == 937 and probe.next_due(950, 937) == 1037


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("diagnostics.matrices=[fisher]", "diagnostics.matrices = ['fisher'] is invalid: must be a non-empty list"),
        ("diagnostics.top_k=41", "diagnostics.top_k = 41 is invalid: must be at most diagnostics.lanczos_steps = 40"),
        ("diagnostics.every_steps=0", "diagnostics.every_steps = 0 is invalid: must be an integer >= 1"),
        ("diagnostics.negative_tol=0.9", "diagnostics.negative_tol = 0.9 is invalid: must be a number >= 0 and <= 0.5"),
    ],
)
def test_bad_settings_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["diagnostics=curvature", override]))
    assert str(err.value).startswith(message), str(err.value)


def test_presets_compose():
    assert validate(compose_config([])).diagnostics.name == "none"
    on = validate(compose_config(["diagnostics=curvature"])).diagnostics
    assert on.name == "curvature" and on.matrices == ["hessian", "gauss_newton"] and on.every_steps == 100


def test_unknown_preset_names_the_choices(tmp_path):
    proc = train_cli("diagnostics=hessian", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "curvature" in proc.stderr and "none" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_more_lanczos_steps_than_parameters_is_refused_before_training(real_mnist_dir, tmp_path):
    cfg = compose_config(BASE + [f"data.dir={real_mnist_dir}", "diagnostics=curvature", "diagnostics.slq_steps=8000"])
    with pytest.raises(
        ConfigError, match="diagnostics.slq_steps = 8000 is invalid: must be at most the 7960 parameters"
    ):
        experiment.run(cfg, tmp_path)
    assert not (tmp_path / runs.STEPS_FILE).exists()


@pytest.fixture(scope="module")
def measured(real_mnist_dir, tmp_path_factory):
    """150 steps of Hessian-free with curvature every 50 steps (CLI, W&B offline), and the same run without."""
    root = tmp_path_factory.mktemp("curvature")
    common = [f"data.dir={real_mnist_dir}", "trainer.max_steps=150", "optimizer=hessian_free", "trainer.chunk_steps=25"]
    proc = train_cli(*common, "diagnostics=curvature", *SIZES, "logger.wandb.mode=offline", f"hydra.run.dir={root}/on")
    assert proc.returncode == 0, proc.stderr[-3000:]
    experiment.run(compose_config(BASE + common), root / "off")
    return root


@pytest.mark.slow
def test_measurements_at_due_steps_off_the_time_axis(measured):
    on, off = runs.load_run(measured / "on"), runs.load_run(measured / "off")
    # Training is untouched: the same losses, step for step.
    np.testing.assert_array_equal(on.steps["train_loss"], off.steps["train_loss"])
    curv = on.curvature
    np.testing.assert_array_equal(curv["step"], [0, 50, 100, 150])
    # time_s of a measurement is the optimizer time at its step; its own cost is `seconds`, on another clock.
    at = {int(s): t for s, t in zip(on.steps["step"], on.steps["time_s"])}
    np.testing.assert_allclose(curv["time_s"][1:], [at[50], at[100], at[150]], rtol=1e-12)
    assert curv["time_s"][0] == 0.0 and np.all(curv["seconds"] > 0)
    assert on.summary["curvature_calls"] == 4
    assert on.summary["curvature_time_s"] == pytest.approx(curv["seconds"].sum(), rel=1e-6)
    assert "curvature_time_s" not in off.summary and not off.curvature
    # Eigenvalues ordered, Gauss-Newton positive semi-definite, SLQ weights a probability.
    assert np.all(curv["hessian_top1"] >= curv["hessian_top2"]) and np.all(curv["hessian_bottom1"] < 0)
    assert np.all(curv["gauss_newton_bottom1"] > -1e-8) and np.all(curv["gauss_newton_neg_mass"] == 0)
    weights = np.stack([curv[f"hessian_slq_weight{j}"] for j in range(16)])
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-9)


@pytest.mark.slow
def test_wandb_offline_files_hold_the_summary_columns(measured):
    from second_order.suite.tracking.wandb_io import read_offline_runs

    record = read_offline_runs(measured / "on")
    rows = [r for r in record.history if "curvature/hessian_top1" in r]
    curv = runs.load_run(measured / "on").curvature
    assert [r["step"] for r in rows] == [0, 50, 100, 150]
    np.testing.assert_array_equal([r["curvature/hessian_top1"] for r in rows], curv["hessian_top1"])
    logged = {k[len("curvature/") :] for r in rows for k in r if k.startswith("curvature/")}
    assert logged == {c for c in curv if c not in runs.CURVATURE_COLUMNS and is_summary_column(c)}


@pytest.mark.slow
def test_a_resumed_run_measures_each_step_once_and_the_same(measured, real_mnist_dir, tmp_path):
    common = BASE + [f"data.dir={real_mnist_dir}", "diagnostics=curvature", *SIZES]
    experiment.run(compose_config(common + ["trainer.max_steps=100"]), tmp_path)
    experiment.run(compose_config(common + ["trainer.max_steps=150", "trainer.resume=true"]), tmp_path)
    resumed, whole = runs.load_run(tmp_path).curvature, runs.load_run(measured / "on").curvature
    np.testing.assert_array_equal(resumed["step"], [0, 50, 100, 150])
    for name in ("hessian_top1", "gauss_newton_trace", "hessian_neg_mass", "hessian_slq_node3"):
        np.testing.assert_allclose(resumed[name], whole[name], rtol=1e-9, err_msg=name)
