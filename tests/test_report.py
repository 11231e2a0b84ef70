"""Figures and tables of the report from synthetic run directories (no training)."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from second_order.suite.report import style
from second_order.suite.report.figures import FIGURES, accuracy_curve, aggregate, moving_average
from second_order.suite.tracking.runs import (
    CONFIG_FILE,
    ENV_FILE,
    EVAL_COLUMNS,
    EVAL_FILE,
    STEP_COLUMNS,
    STEPS_FILE,
    SUMMARY_FILE,
    CsvLog,
    find_runs,
    write_json,
)  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]

# method -> (final loss, decay steps, seconds per step); newton stays near ln 10
SYNTH = {
    "sgd": (0.35, 60.0, 0.002),
    "newton": (2.30, math.inf, 0.5),
    "newton_damped": (0.60, 150.0, 0.8),
    "hessian_free": (0.40, 80.0, 0.003),
    "gauss_newton": (0.38, 70.0, 0.003),
}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# optimizer settings of the synthetic config.yaml (the paper's, as in configs/optimizer/)
OPT_CONFIG = {
    "sgd": {"_target_": "optax.sgd", "learning_rate": 0.1},
    "newton": {"_target_": "second_order.optim.newton", "learning_rate": 0.5, "damping": 0.0, "max_rank": 640},
    "newton_damped": {"_target_": "second_order.optim.newton", "learning_rate": 0.5, "damping": 32.0, "max_rank": 640},
    "hessian_free": {"_target_": "second_order.optim.hessian_free", "learning_rate": 0.5, "damping": 32.0, "tol": 1e-5},
    "gauss_newton": {"_target_": "second_order.optim.gauss_newton", "learning_rate": 0.5, "damping": 4.0, "tol": 1e-5},
}


def run_config(method: str, seed: int, epochs: int, batch: int, overrides: dict | None = None) -> dict:
    """A resolved config.yaml like the trainer's; ``overrides`` maps dotted keys to values."""
    cfg = {
        "seed": seed, "experiment_name": "synthetic", "x64": True,
        "data": {"dir": f"/data/{seed}", "verify_checksums": True},
        "model": {"hidden": [10], "num_classes": 10},
        "trainer": {"epochs": epochs, "batch_size": batch, "max_steps": None, "max_time_s": None, "eval_every": 1,
                    "chunk_steps": 100, "checkpoint_every_s": 300, "resume": False, "progress": False},
        "optimizer": {"name": method, **OPT_CONFIG.get(method, {"_target_": f"optax.{method}", "learning_rate": 0.01})},
        "logger": {"wandb": {"mode": "offline", "project": "second-order", "entity": None, "tags": []}},
    }  # fmt: skip
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node: dict[str, Any] = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def write_run(
    root: Path,
    method: str,
    seed: int,
    *,
    n_steps: int = 300,
    per_epoch: int = 50,
    status: str = "completed",
    diverge_at: int | None = None,
    epochs: int | None = None,
    batch: int = 64,
    config: dict | None = None,
    write_config: bool = True,
    new_keys: bool = True,
    summary_extra: dict | None = None,
    tag: str = "",
    diagnostics: dict | None = None,
) -> dict:
    """One synthetic run directory; returns its summary.

    ``epochs`` is the configured protocol (default: the epochs ``n_steps`` covers, rounded
    up); ``config`` overrides config.yaml keys (dotted); ``new_keys=False`` leaves out the
    summary keys old runs lack (steps_per_epoch, protocol_steps, dataset, model, segments, ...).
    """
    final, tau, dt = SYNTH.get(method, (0.5, 100.0, 0.004))
    epochs = epochs or -(-n_steps // per_epoch)
    rng = np.random.default_rng(1000 * seed + len(method))
    run_dir = root / f"{method}_s{seed}_{status}{tag}"
    run_dir.mkdir(parents=True)
    step = np.arange(1, n_steps + 1)
    loss = final + (math.log(10) - final) * np.exp(-step / tau) + rng.normal(0, 0.08, n_steps)
    if diverge_at is not None:
        loss[diverge_at - 20 : diverge_at] *= np.linspace(1.0, 30.0, 20)
        loss[diverge_at:] = np.nan
    time_s = np.cumsum(dt * (1 + 0.1 * rng.random(n_steps)))
    epoch = (step - 1) // per_epoch
    extra = {"cg_iterations": rng.integers(1, 10, n_steps), **(diagnostics or {})}
    log = CsvLog(run_dir / STEPS_FILE, STEP_COLUMNS + tuple(extra))
    log.write_rows(zip(step, epoch, loss, time_s, *extra.values()))
    log.close()
    accs = []
    evals = CsvLog(run_dir / EVAL_FILE, EVAL_COLUMNS)
    eval_steps = list(range(per_epoch, n_steps + 1, per_epoch))
    if status != "diverged" and n_steps % per_epoch:
        eval_steps.append(n_steps)  # like the trainer: final eval at a mid-epoch stop, floored epoch
    for s in eval_steps:
        bad = diverge_at is not None and s >= diverge_at
        acc = float("nan") if bad else 1.0 - 0.3 * loss[s - 1] + rng.normal(0, 0.01)
        accs.append(acc)
        evals.write_rows([(s // per_epoch, s, time_s[s - 1], loss[s - 1], acc)])
    evals.close()
    write_json(run_dir / ENV_FILE, {"backend": "cpu", "device_kind": "cpu"})
    if write_config:
        (run_dir / CONFIG_FILE).write_text(
            yaml.safe_dump(run_config(method, seed, epochs, batch, config), sort_keys=False)
        )
    summary = {
        "optimizer": method,
        "experiment": "synthetic",
        "seed": seed,
        "status": status,
        "train_loss": float(np.mean(loss[-per_epoch:])),
        "test_loss": float(loss[-1]),
        "test_acc": accs[-1] if accs else float("nan"),
        "steps": n_steps,
        "epochs_completed": n_steps // per_epoch,
        "train_time_s": float(time_s[-1]),
        "compile_time_s": 1.5,
        "eval_time_s": 0.2,
        "diverged": diverge_at is not None,
        "diverged_step": diverge_at,
        "param_count": 7960,
    }
    if new_keys:
        summary.update({
            "steps_per_epoch": per_epoch, "protocol_steps": epochs * per_epoch, "epochs": epochs,
            "batch_size": batch, "train_examples": per_epoch * batch + batch // 2, "test_examples": 2000,
            "dataset": "synthmnist", "model": "MLP 784-10-10 (synthetic)",
            "segments": [{"start_step": 0, "end_step": n_steps, "backend": "cpu", "device_kind": "cpu", "host": "h"}],
        })  # fmt: skip
    summary.update(summary_extra or {})
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def make_synthetic_runs(root: Path, n_steps: int = 300, per_epoch: int = 50) -> dict[str, list[dict]]:
    """5 methods x 3 seeds, plus a budget-limited and a diverged newton run."""
    summaries: dict[str, list[dict]] = {m: [] for m in SYNTH}
    for method in SYNTH:
        for seed in range(3):
            summaries[method].append(write_run(root, method, seed, n_steps=n_steps, per_epoch=per_epoch))
    budget = n_steps * 2 // 5
    summaries["newton"].append(
        write_run(root, "newton", 3, n_steps=budget, status="budget", epochs=n_steps // per_epoch,
                  config={"trainer.max_steps": budget}, per_epoch=per_epoch)
    )  # fmt: skip
    summaries["newton"].append(
        write_run(root, "newton", 4, n_steps=n_steps // 3, status="diverged", diverge_at=n_steps // 4,
                  epochs=n_steps // per_epoch, per_epoch=per_epoch)
    )  # fmt: skip
    return summaries


def _pm(values: list[float], scale: float, decimals: int) -> str:
    x = np.array([v for v in values if v is not None and math.isfinite(v)]) * scale
    return f"{np.mean(x):.{decimals}f} ± {np.std(x, ddof=1):.{decimals}f}"


def test_make_figures_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summaries = make_synthetic_runs(tmp_path / "runs")
    out = tmp_path / "results"
    assert _load_script().main([str(tmp_path / "runs"), "--out", str(out), "--smooth", "20"]) == 0

    names = [spec.name for spec in FIGURES if not spec.requires]  # the paper's figures and the overview
    assert len(names) == 12 and names[0].startswith("fig00") and names[-1].startswith("fig11")
    assert not list(out.glob("fig12*")), "an optional figure was drawn without its runs"
    for name in names:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, name
    for table in ("table1_training_time", "table2_train_loss", "table3_test_accuracy"):
        for ext in ("md", "csv"):
            assert (out / f"{table}.{ext}").stat().st_size > 0

    t3 = (out / "table3_test_accuracy.md").read_text()
    for method in ("sgd", "hessian_free", "gauss_newton", "newton"):
        assert _pm([s["test_acc"] for s in summaries[method]], 100.0, 2) in t3, method
    t2 = (out / "table2_train_loss.md").read_text()
    assert _pm([s["train_loss"] for s in summaries["newton_damped"]], 1.0, 4) in t2

    with open(out / "table1_training_time.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert {m: float(rows[m]["paper_v100_time_s"]) for m in SYNTH} == {
        "sgd": 222, "newton": 21257, "newton_damped": 34933, "hessian_free": 244, "gauss_newton": 246,
    }  # fmt: skip
    times = [s["train_time_s"] for s in summaries["sgd"]]
    assert float(rows["sgd"]["train_time_s_mean"]) == pytest.approx(np.mean(times))
    per_step = np.mean([s["train_time_s"] / s["steps"] for s in summaries["newton"]])
    assert float(rows["newton"]["protocol_steps_min"]) == 300  # 6 epochs x 50 steps, from the runs
    assert float(rows["newton"]["extrapolated_time_s_mean"]) == pytest.approx(per_step * 300)
    assert rows["newton"]["budget_limited_runs"] == "1"
    t1 = (out / "table1_training_time.md").read_text()
    assert "21257" in t1 and "34933" in t1 and "xtrapolated" in t1 and "budget" in t1
    assert "Our hardware: cpu." in t1

    printed = capsys.readouterr()
    assert "wrote" in printed.out and "warning: no runs" not in printed.err


def test_a_missing_or_empty_run_root_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert _load_script().load([tmp_path / "nope", tmp_path / "empty"], None) == []
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'nope'} does not exist" in err
    assert f"warning: no usable run directories (summary.json) under {tmp_path / 'empty'}" in err


def test_missing_methods_and_single_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(style, "FIGURE_FORMATS", ("png",))  # PDFs are covered above; keep this test fast
    write_run(tmp_path / "runs", "sgd", 0, n_steps=120)
    write_run(tmp_path / "runs", "hessian_free", 0, n_steps=120, status="budget")
    out = tmp_path / "results"
    assert _load_script().main([str(tmp_path / "runs"), "--out", str(out), "--log-loss", "--band", "minmax"]) == 0
    err = capsys.readouterr().err
    for method in ("newton", "newton_damped", "gauss_newton"):
        assert f"no runs for method '{method}'" in err
    drawn = {"fig00_overview_loss_vs_time", "fig06_loss_vs_step_hessian_free", "fig07_loss_vs_time_hessian_free",
             "fig08_acc_vs_epoch_hessian_free", "fig09_loss_vs_step_gauss_newton",
             "fig10_loss_vs_time_gauss_newton", "fig11_acc_vs_epoch_gauss_newton"}  # fmt: skip
    assert {spec.name for spec in FIGURES if (out / f"{spec.name}.png").exists()} == drawn
    assert "warning: fig01_loss_vs_step_newton: no runs of newton; figure skipped" in err
    assert "222" in (out / "table1_training_time.md").read_text()


def test_no_runs_is_an_error(tmp_path: Path) -> None:
    assert _load_script().main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1


def test_moving_average_and_aggregate() -> None:
    y = np.array([1.0, 3.0, np.nan, 5.0, np.inf])
    np.testing.assert_allclose(moving_average(y, 2), [1.0, 2.0, np.nan, 5.0, np.nan])
    np.testing.assert_allclose(moving_average(y, 1), [1.0, 3.0, np.nan, 5.0, np.nan])
    mean, lo, hi = aggregate(np.array([[1.0, 2.0, np.nan], [3.0, np.nan, np.nan]]))
    np.testing.assert_allclose(mean, [2.0, 2.0, np.nan])
    np.testing.assert_allclose(hi - mean, np.array([np.std([1.0, 3.0], ddof=1), np.nan, np.nan]))


def test_budget_eval_at_fractional_epoch(tmp_path: Path) -> None:
    write_run(tmp_path, "newton", 0, n_steps=120, per_epoch=50, status="budget")
    curve = accuracy_curve(find_runs([tmp_path]))
    assert curve is not None
    np.testing.assert_allclose(curve.x, [1.0, 2.0, 2.4])  # final eval logged as epoch 2, step 120
    assert [(x, kind) for x, _, kind in curve.ends] == [(2.4, "budget")]


def test_trajectory_figures_appear_for_runs_that_log_their_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damping (λ, ρ) and trust-region (Δ, ρ, accepted) figures, from any optimizer's logged columns."""
    from second_order.suite.report import trajectories
    from second_order.suite.report.grouping import group_runs
    from second_order.suite.report.loading import load_runs
    from second_order.suite.report.trajectories import group_trajectory

    monkeypatch.setattr(style, "FIGURE_FORMATS", ("png",))
    n = 120
    write_run(tmp_path / "runs", "sgd", 0, n_steps=n)
    out = tmp_path / "results"
    assert _load_script().main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not list(out.glob("fig13*")) and not list(out.glob("fig14*")), "no run logged damping or radius"

    lam = 32.0 * (2 / 3) ** np.arange(n)
    for seed in (0, 1):
        write_run(tmp_path / "runs", "hessian_free_lm", seed, n_steps=n,
                  diagnostics={"damping": lam, "rho": np.full(n, 0.9)})  # fmt: skip
    accepted = (np.arange(n) % 4 != 0).astype(float)  # 3 in 4 accepted
    radius = np.where(np.arange(n) % 2 == 0, 0.5, 0.25)  # Δ halved and doubled in turn
    write_run(tmp_path / "runs", "trust_region_cg", 0, n_steps=n,
              diagnostics={"radius": radius, "rho": np.full(n, 5.0), "accepted": accepted})  # fmt: skip
    write_run(tmp_path / "runs", "kfac", 0, n_steps=n, diagnostics={"damping": np.full(n, 0.3)})  # a fixed λ
    assert _load_script().main([str(tmp_path / "runs"), "--out", str(out), "--smooth", "4"]) == 0
    assert (out / "fig13_damping_trajectory.png").stat().st_size > 1000
    assert (out / "fig14_trust_region_trajectory.png").stat().st_size > 1000
    captions = (out / "captions.md").read_text()
    assert "**fig13_damping_trajectory.**" in captions and "(2 seeds)" in captions
    assert "**fig14_trust_region_trajectory.**" in captions and "4-step moving average" in captions
    assert "(Δ unsmoothed; ρ clipped" in captions and "(λ unsmoothed; ρ clipped" in captions
    assert "Not drawn (constant λ): K-FAC." in captions and "ρ: the median over seeds" in captions
    lm_fig = trajectories.plot_trajectory(trajectories.TRAJECTORIES[0], group_runs(load_runs([tmp_path / "runs"])))
    assert lm_fig is not None and [line.get_label() for line in lm_fig.axes[0].lines] == ["HF Newton + LM"]
    fig = trajectories.plot_trajectory(trajectories.TRAJECTORIES[1], group_runs(load_runs([tmp_path / "runs"])), 4)
    assert fig is not None
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), radius)  # Δ as logged, not averaged

    groups = {g.optimizer: g for g in group_runs(load_runs([tmp_path / "runs"]))}
    steps, mean = group_trajectory(groups["hessian_free_lm"], "damping", 1)  # type: ignore[misc]
    np.testing.assert_allclose(mean, lam, rtol=1e-9)  # mean over seeds of the logged λ
    _, rate = group_trajectory(groups["trust_region_cg"], "accepted", 4)  # type: ignore[misc]
    assert rate[-1] == pytest.approx(0.75)
    assert group_trajectory(groups["sgd"], "damping", 4) is None
    spiky = np.r_[0.9, 0.9, 0.9, -40.0, 0.9, 1.0, 1.0]  # one rejected-looking step
    np.testing.assert_allclose(trajectories.moving_median(spiky, 3), [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 1.0])


def test_pooling_is_warned_only_when_one_group_mixes_experiments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(style, "FIGURE_FORMATS", ("png",))
    write_run(tmp_path / "a", "sgd", 0, n_steps=60, summary_extra={"experiment": "paper"})
    write_run(tmp_path / "b", "online_parabola", 0, n_steps=60, summary_extra={"experiment": "beyond_paper"})
    assert _load_script().main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0
    assert "pooled" not in capsys.readouterr().err  # two experiments, but each method from one
    write_run(tmp_path / "b", "sgd", 1, n_steps=60, summary_extra={"experiment": "beyond_paper"})
    assert _load_script().main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0
    assert "warning: SGD: runs of several experiments are pooled: beyond_paper, paper" in capsys.readouterr().err


def test_an_optimizer_seed_that_follows_the_run_seed_does_not_split_groups(tmp_path: Path) -> None:
    """optimizer.seed: ${seed} (Hutchinson probes, sketches) differs per run like the seed itself."""
    from second_order.suite.report.grouping import group_runs
    from second_order.suite.report.loading import load_runs

    for seed in (0, 1, 2):
        write_run(tmp_path, "sophia", seed, n_steps=60, config={"optimizer.seed": seed})
    write_run(tmp_path, "sophia", 0, n_steps=60, config={"optimizer.seed": 0, "optimizer.gamma": 0.1}, tag="g")
    groups = group_runs(load_runs([tmp_path]))
    assert sorted(len(g.runs) for g in groups) == [1, 3]  # gamma splits, the probe seed does not


def write_curvature(run_dir: Path, steps: list[int], top: list[float], nodes: np.ndarray, weights: np.ndarray) -> None:
    """A curvature.csv as diagnostics=curvature writes it (one matrix pair, top_k 1)."""
    from second_order.suite.tracking.runs import CURVATURE_COLUMNS, CURVATURE_FILE

    names = [
        f"{m}_{c}" for m in ("hessian", "gauss_newton") for c in ("top1", "bottom1", "trace", "trace_sem", "neg_mass")
    ]
    names += [f"hessian_slq_node{j}" for j in range(len(nodes))] + [f"hessian_slq_weight{j}" for j in range(len(nodes))]
    log = CsvLog(run_dir / CURVATURE_FILE, CURVATURE_COLUMNS + tuple(names))
    for step, t in zip(steps, top):
        values = [t, -0.5, 10.0, 1.0, 0.01, t / 2, 0.0, 5.0, 0.5, 0.0, *nodes, *weights]
        log.write_rows([(step, step // 50, 0.01 * step, 0.2, *values)])
    log.close()


def test_curvature_series_skip_missing_values_and_zeros_sit_on_the_log_axis_edge(tmp_path: Path) -> None:
    """A NaN (not found) leaves the means, not every later point; short series are not smoothed;
    a 0 on a log panel is a ▼ on the lower edge, not a line that stops."""
    from second_order.suite.report import spectra
    from second_order.suite.report.grouping import group_runs
    from second_order.suite.report.loading import load_runs

    nodes, weights = np.array([-2.0, 0.001, 3.0, 40.0]), np.array([0.01, 0.94, 0.04, 0.01])
    many = list(range(0, 300, 10))  # 30 measurements > MARKERS_UP_TO: smoothed
    tops = [48.0, np.nan] + [0.0] * (len(many) - 2)
    for seed, top in ((0, tops), (1, [40.0] * len(many))):
        write_run(tmp_path / "many", "newton", seed, n_steps=300, config={"diagnostics": {"name": "curvature"}})
        write_curvature(tmp_path / "many" / f"newton_s{seed}_completed", many, top, nodes, weights)
    (group,) = group_runs(load_runs([tmp_path / "many"]))
    _, mean = spectra._series(group, "hessian_top1")  # type: ignore[misc]
    np.testing.assert_allclose(mean[:3], [44.0, 40.0, 20.0])  # step 10: seed 0 not found, seed 1's 40
    _, smooth = spectra._series(group, "hessian_top1", window=5)  # type: ignore[misc]
    assert np.all(np.isfinite(smooth)) and smooth[2] == pytest.approx((44 + 40 + 20) / 3)

    fig = spectra.plot_curvature_along_training([group])
    gn = fig.axes[3]
    assert gn.get_yscale() == "log" and gn.get_ylabel() == "Gauss-Newton λ_max"
    assert not [ln for ln in gn.get_lines() if ln.get_marker() == "v"]  # G's mean stays > 0: seed 1 is 20 throughout
    few = tmp_path / "few"  # 3 measurements: point by point, and the zeros on the edge
    for seed in (0, 1):
        write_run(few, "newton", seed, n_steps=30, config={"diagnostics": {"name": "curvature"}})
        write_curvature(few / f"newton_s{seed}_completed", [0, 10, 20], [48.0, 0.0, 0.0], nodes, weights)
    (group,) = group_runs(load_runs([few]))
    _, raw = spectra._series(group, "hessian_top1", window=5)  # type: ignore[misc]
    np.testing.assert_array_equal(raw, [48.0, 0.0, 0.0])
    ax = spectra.plot_curvature_along_training([group]).axes[0]
    (zeros,) = [ln for ln in ax.get_lines() if ln.get_marker() == "v"]
    np.testing.assert_array_equal(zeros.get_xdata(), [10, 20])


def test_curvature_figures_come_from_measured_runs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs with curvature.csv draw figures 21-22 and stay out of the loss figures and tables."""
    from second_order.suite.report.grouping import group_runs
    from second_order.suite.report.loading import load_runs
    from second_order.suite.report.spectra import _series, split_measured

    monkeypatch.setattr(style, "FIGURE_FORMATS", ("png",))
    nodes, weights = np.array([-2.0, 0.001, 3.0, 40.0]), np.array([0.01, 0.94, 0.04, 0.01])
    write_run(tmp_path / "runs", "sgd", 0, n_steps=120)
    for seed, top in ((0, [40.0, 20.0, 10.0]), (1, [60.0, 30.0, 20.0])):
        write_run(tmp_path / "runs", "hessian_free", seed, n_steps=120, tag="_measured",
                  config={"diagnostics": {"name": "curvature"}})  # fmt: skip
        write_curvature(
            tmp_path / "runs" / f"hessian_free_s{seed}_completed_measured", [0, 50, 100], top, nodes, weights
        )
    runs = load_runs([tmp_path / "runs"])
    plain, measured = split_measured(runs)
    assert [r.optimizer for r in plain] == ["sgd"] and len(measured) == 2
    (group,) = group_runs(measured)
    steps, mean = _series(group, "hessian_top1")  # type: ignore[misc]
    np.testing.assert_array_equal(steps, [0, 50, 100])
    np.testing.assert_allclose(mean, [50.0, 25.0, 15.0])  # mean over the two seeds

    out = tmp_path / "results"
    assert _load_script().main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "fig21_curvature_along_training.png").stat().st_size > 1000
    assert (out / "fig22_spectral_density.png").stat().st_size > 1000
    captions = (out / "captions.md").read_text()
    assert "**fig21_curvature_along_training.**" in captions and "HF Newton" in captions
    overview = captions.split("**fig00_overview_loss_vs_time.**")[1].split("\n")[0]
    assert "HF Newton" not in overview, "measured runs must not join the loss figures"

    # Measured runs alone: they are all there is, so they draw the loss figures too.
    alone = tmp_path / "alone"
    assert (
        _load_script().main([str(tmp_path / "runs" / "hessian_free_s0_completed_measured"), "--out", str(alone)]) == 0
    )
    assert (alone / "fig21_curvature_along_training.png").exists() and (
        alone / "fig00_overview_loss_vs_time.png"
    ).exists()


def test_every_method_has_its_own_colour_and_line_style() -> None:
    """17 methods share the overview figure: no two may look alike in colour or in greyscale."""
    import matplotlib as mpl

    named = {  # matplotlib's named styles, as its rcParams define them
        "-": (),
        "--": tuple(mpl.rcParams["lines.dashed_pattern"]),
        "-.": tuple(mpl.rcParams["lines.dashdot_pattern"]),
        ":": tuple(mpl.rcParams["lines.dotted_pattern"]),
    }

    def dash_sequence(linestyle) -> tuple[float, ...]:
        return named[linestyle] if isinstance(linestyle, str) else tuple(float(d) for d in linestyle[1])

    table = {**style.STYLES, **style.EXTRA_STYLES}
    colours = [s.color.lower() for s in table.values()]
    dashes = [dash_sequence(s.linestyle) for s in table.values()]
    assert len(set(colours)) == len(table), sorted(c for c in colours if colours.count(c) > 1)
    assert len(set(dashes)) == len(table), [m for m, d in zip(table, dashes) if dashes.count(d) > 1]
