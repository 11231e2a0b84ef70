"""The report reads everything from the runs: grouping by config, protocol facts,
bad runs and torn rows, runs resumed on another device, the diagnostics axes."""

from __future__ import annotations

import csv
import importlib
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_report import _load_script, write_run

from second_order.suite.report import style
from second_order.suite.report.diagnostics import NEWTON_PANELS, SOLVE_PATHS, plot_diagnostics
from second_order.suite.report.figures import plot_loss_vs_step, plot_loss_vs_time
from second_order.suite.report.grouping import IGNORED_KEYS, group_runs
from second_order.suite.report.loading import ReportWarning, load_runs
from second_order.suite.report.tables import fmt_mean_std, fmt_num, train_loss_table, training_time_table
from second_order.suite.tracking.runs import STEPS_FILE, SUMMARY_FILE, CsvLog


@pytest.fixture(autouse=True)
def _png_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(style, "FIGURE_FORMATS", ("png",))  # PDFs are covered in test_report.py


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _table1(out: Path) -> list[dict[str, str]]:
    with open(out / "table1_training_time.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ grouping (task 2)


def test_experiments_that_repeat_a_seed_are_not_pooled(tmp_path: Path) -> None:
    """Seeds 0, 1 of SGD from ``paper`` and seed 0 from ``fig01`` would count seed 0 twice:
    two groups, named by experiment; disjoint seeds from two experiments still pool."""
    root = tmp_path / "runs"

    def run_of(method: str, seed: int, experiment: str, tag: str = "") -> None:
        write_run(root, method, seed, n_steps=60, config={"experiment_name": experiment},
                  summary_extra={"experiment": experiment}, tag=f"_{experiment}{tag}")  # fmt: skip

    for method, seed, experiment in [("sgd", 0, "paper"), ("sgd", 1, "paper"), ("sgd", 0, "fig01"),
                                     ("hessian_free", 0, "paper"), ("hessian_free", 1, "fig01")]:  # fmt: skip
        run_of(method, seed, experiment)
    groups = group_runs(load_runs([root]))
    sgd = [g for g in groups if g.optimizer == "sgd"]
    assert sorted((g.config["experiment_name"], [r.seed for r in g.runs]) for g in sgd) == [
        ("fig01", [0]), ("paper", [0, 1]),
    ]  # fmt: skip
    assert all("experiment" in g.label for g in sgd) and sgd[0].label != sgd[1].label
    hf = [g for g in groups if g.optimizer == "hessian_free"]
    assert [[r.seed for r in g.runs] for g in hf] == [[0, 1]]
    run_of("sgd", 1, "paper", tag="_copy")  # one experiment's seed twice: nothing tells them apart, a warning
    with pytest.warns(ReportWarning, match=r"seed\(s\) 1 found more than once"):
        group_runs(load_runs([root]))


def test_runs_group_by_config_not_by_optimizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, "sgd", seed, n_steps=100)
        write_run(root, "hessian_free", seed, n_steps=100, config={"optimizer.damping": 1.0}, tag="_d1")
        write_run(root, "hessian_free", seed, n_steps=100, config={"optimizer.damping": 4.0}, tag="_d4")
    # ignored keys and budgets do not split a group: this is a third seed of damping 1
    write_run(root, "hessian_free", 2, n_steps=60, status="budget", tag="_d1",
              config={"optimizer.damping": 1.0, "trainer.max_steps": 60, "trainer.resume": True,
                      "trainer.chunk_steps": 7, "data.dir": "/elsewhere", "logger.wandb.mode": "disabled",
                      "experiment_name": "other"})  # fmt: skip
    write_run(root, "lion", 0, n_steps=100)  # an optimizer the paper does not have
    write_run(root, "sgd", 7, n_steps=100, write_config=False, tag="_old")  # joins the only SGD group

    with pytest.warns(ReportWarning, match="sgd_s7_completed_old: no config.yaml"):
        groups = group_runs(load_runs([root]))
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("SGD", 3), ("HF Newton (damping 1)", 3), ("HF Newton (damping 4)", 2), ("lion", 1),
    ]  # fmt: skip
    assert groups[1].budgets() == "max steps 60" and "trainer.resume" in IGNORED_KEYS
    assert groups[1].style.color != groups[2].style.color
    assert style.method_style("lion") == style.method_style("lion")  # stable fallback
    assert style.method_style("lion").color not in {s.color for s in style.STYLES.values()}

    out = tmp_path / "out"
    assert _load_script().main([str(root), "--out", str(out), "--smooth", "5"]) == 0
    rows = _table1(out)
    hf = {r["group"]: r for r in rows if r["method"] == "hessian_free"}
    assert set(hf) == {"hessian_free[optimizer.damping=1]", "hessian_free[optimizer.damping=4]"}
    assert (
        hf["hessian_free[optimizer.damping=1]"]["n_runs"] == "3"
        and "max steps 60" in hf["hessian_free[optimizer.damping=1]"]["note"]
    )
    assert any(r["method"] == "lion" for r in rows)
    captions = (out / "captions.md").read_text()
    assert "“HF Newton (damping 4)”; learning rate 0.5, damping 4, tol 1e-05" in captions
    assert "lion (learning rate 0.01)" in captions  # the overview draws every optimizer found
    printed = capsys.readouterr().out
    assert "found HF Newton (damping 1): 3 run(s)" in printed

    runs = load_runs([root])
    with pytest.warns(ReportWarning, match="no config.yaml"):
        labels = _legend_labels(plot_loss_vs_step(runs, ["sgd", "hessian_free"], smooth=5))
    assert labels[:3] == ["SGD", "HF Newton (damping 1)", "HF Newton (damping 4)"]


def test_width_difference_labels_every_method(tmp_path: Path) -> None:
    """A non-optimizer key that differs (model width) is named on every group."""
    write_run(tmp_path, "sgd", 0, n_steps=60, config={"model.hidden": [10]})
    write_run(tmp_path, "sgd", 0, n_steps=60, config={"model.hidden": [32, 32]}, tag="_w32")
    write_run(tmp_path, "hessian_free", 0, n_steps=60, config={"model.hidden": [32, 32]})
    write_run(tmp_path, "sgd", 1, n_steps=60, write_config=False)
    labels = [g.label for g in group_runs(load_runs([tmp_path]))]
    assert labels == ["SGD (hidden 10)", "SGD (hidden 32-32)", "SGD (config not recorded)", "HF Newton (hidden 32-32)"]


# ------------------------------------------------------------- protocol facts (task 1)


def test_protocol_and_captions_come_from_the_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # budget-limited runs of a 7-epoch protocol with 937 steps per epoch: 6,559 steps, not 7 x 938
    for seed in (0, 1):
        write_run(root, "sgd", seed, n_steps=150, per_epoch=937, epochs=7, batch=128, status="budget",
                  config={"trainer.max_steps": 150},
                  summary_extra={"dataset": "fashion_mnist", "model": "MLP 784-32-10"})  # fmt: skip
    out = tmp_path / "out"
    assert _load_script().main([str(root), "--out", str(out)]) == 0
    sgd = next(r for r in _table1(out) if r["method"] == "sgd")
    assert float(sgd["protocol_steps_min"]) == 6559
    per_step = np.mean([json.loads((d / SUMMARY_FILE).read_text())["train_time_s"] / 150 for d in root.iterdir()])
    assert float(sgd["extrapolated_time_s_mean"]) == pytest.approx(per_step * 6559)
    t1 = (out / "table1_training_time.md").read_text()
    assert "| 6,559 |" in t1 and "6566" not in t1
    captions = (out / "captions.md").read_text()
    assert "fashion_mnist, MLP 784-32-10, batch 128, 7 epochs configured" in captions  # budget runs: fewer
    assert "MNIST" not in captions and "batch 64" not in captions and "784-10-10" not in captions
    assert "2,000 fashion_mnist test examples" in (out / "table3_test_accuracy.md").read_text()


def test_protocol_fallbacks_for_old_runs(tmp_path: Path) -> None:
    """Without the new summary keys: config epochs x logged steps per epoch; without both: a dash."""
    old = tmp_path / "old"
    write_run(old, "sgd", 0, n_steps=120, per_epoch=50, epochs=7, status="budget", new_keys=False)
    bare = tmp_path / "bare"
    write_run(bare, "hessian_free", 0, n_steps=40, per_epoch=50, status="budget", new_keys=False,
              write_config=False)  # fmt: skip
    table = training_time_table(load_runs([old, bare]))
    rec = {r["method"]: r for r in table.records}
    assert rec["sgd"]["protocol_steps_min"] == 350  # 7 epochs x 50 steps, the latter from steps.csv
    assert not np.isfinite(rec["hessian_free"]["extrapolated_time_s_mean"])
    md = table.markdown()
    hf_row = next(line for line in md.splitlines() if line.startswith("| Hessian-free Newton"))
    assert "| —† |" in hf_row and "†: the runs do not record their protocol" in md
    from second_order.suite.report.captions import protocol_line

    assert protocol_line(load_runs([old])) == "MLP 784-10-10, batch 64, 7 epochs configured"  # from config.yaml
    done = tmp_path / "done"
    write_run(done, "sgd", 0, n_steps=350, per_epoch=50, epochs=7, status="completed", new_keys=False)
    assert protocol_line(load_runs([done])) == "MLP 784-10-10, batch 64, 7 epochs"  # every run did them


# ------------------------------------------------------------------ robustness (task 3)


def test_bad_runs_and_torn_rows_do_not_stop_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, "sgd", seed, n_steps=100)
        write_run(root, "hessian_free", seed, n_steps=100)
    torn = root / "sgd_s1_completed" / STEPS_FILE
    with open(torn, "a") as f:
        f.write("101,2,0.3")  # the last line, cut off mid-write: fewer fields, no newline
    half = root / "hessian_free_s2_completed" / STEPS_FILE
    with open(half, "a") as f:
        f.write("101,2,0.31,1.2e")  # a half-written number
    garbage = root / "sgd_s2_completed" / SUMMARY_FILE
    garbage.write_text('{"optimizer": "sgd", "seed": 2, "status": "compl')
    failed = write_run(root, "gauss_newton", 0, n_steps=20, status="interrupted", summary_extra={"seed": "${seed}"})
    assert failed["seed"] == "${seed}"
    dup = root / "hessian_free_s1_completed" / STEPS_FILE
    log = CsvLog(dup, ("step", "epoch", "train_loss", "time_s", "cg_iterations"))
    log.write_rows([(99, 1, 9.0, 1.0, 3), (100, 1, 8.0, 1.0, 3)])  # a resume that re-logged steps 99, 100
    log.close()

    out = tmp_path / "out"
    assert _load_script().main([str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for path in (torn, half, garbage, dup, root / "gauss_newton_s0_interrupted" / SUMMARY_FILE):
        assert f"warning: {path}" in err, path
    assert all(line.startswith("warning: ") for line in err.splitlines() if line)
    rows = {r["method"]: r for r in _table1(out)}
    assert (
        rows["sgd"]["n_runs"] == "2" and rows["hessian_free"]["n_runs"] == "3" and rows["gauss_newton"]["n_runs"] == "0"
    )
    assert (out / "fig07_loss_vs_time_hessian_free.png").exists()

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", ReportWarning)
        runs = {(r.optimizer, r.seed): r for r in load_runs([root])}
    steps = runs["hessian_free", 1].steps
    assert list(steps["step"][-3:]) == [98, 99, 100] and list(steps["train_loss"][-2:]) == [9.0, 8.0]
    assert runs["sgd", 1].steps["step"][-1] == 100 and runs["hessian_free", 2].steps["step"][-1] == 100


# ---------------------------------------------------------- several devices (task 4)


def test_run_resumed_on_another_device_is_left_out_of_time_axes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    write_run(root, "sgd", 0, n_steps=100)
    segments = [
        {"start_step": 0, "end_step": 60, "backend": "cpu", "device_kind": "cpu", "host": "a"},
        {"start_step": 60, "end_step": 100, "backend": "gpu", "device_kind": "NVIDIA H100", "host": "b"},
    ]
    write_run(root, "hessian_free", 0, n_steps=100, summary_extra={"segments": segments})
    write_run(root, "hessian_free", 1, n_steps=100)
    runs = load_runs([root])
    mixed = root / "hessian_free_s0_completed"

    with pytest.warns(ReportWarning, match="hessian_free_s0_completed.*cpu \\+ NVIDIA H100 \\(gpu\\)"):
        fig = plot_loss_vs_time(runs, ["sgd", "hessian_free"], smooth=5)
    assert "HF Newton" in _legend_labels(fig)  # drawn from the one single-device seed
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        step_fig = plot_loss_vs_step(runs, ["sgd", "hessian_free"], smooth=5)  # step axes keep the run
    assert "±1 std over seeds" in _legend_labels(step_fig)

    out = tmp_path / "out"
    assert _load_script().main([str(root), "--out", str(out)]) == 0
    assert f"warning: {mixed}: segments ran on different devices" in capsys.readouterr().err
    hf = next(r for r in _table1(out) if r["method"] == "hessian_free")
    assert hf["mixed_device_runs"] == "1" and "time mixed across devices" in hf["note"]
    t1 = (out / "table1_training_time.md").read_text()
    assert "‡ mixed" in t1 and "Our hardware: NVIDIA H100 (gpu), cpu." in t1
    assert "Left out: hessian_free_s0_completed" in (out / "captions.md").read_text()


def test_run_resumed_on_another_number_of_devices_counts_as_mixed(tmp_path: Path) -> None:
    from second_order.suite.report.runinfo import devices, mixed_devices

    root = tmp_path / "runs"
    segments = [
        {"start_step": 0, "end_step": 60, "backend": "gpu", "device_kind": "NVIDIA H100", "num_devices": 4},
        {"start_step": 60, "end_step": 100, "backend": "gpu", "device_kind": "NVIDIA H100", "num_devices": 1},
    ]
    write_run(root, "sgd", 0, n_steps=100, summary_extra={"segments": segments})
    write_run(root, "sgd", 1, n_steps=100, summary_extra={"segments": segments[:1]})
    mixed, whole = sorted(load_runs([root]), key=lambda run: run.summary["seed"])
    assert mixed_devices(mixed) and not mixed_devices(whole)
    assert devices(mixed) == ["4 × NVIDIA H100 (gpu)", "NVIDIA H100 (gpu)"]


# -------------------------------------------------------------- diagnostics (task 6)


def newton_run_logging(root: Path, column: str, value: Callable[[int], str]) -> None:
    """A Newton run under ``root`` whose steps.csv has ``column``, ``value(i)`` at its i-th step."""
    write_run(root, "newton", 0, n_steps=30)
    run_dir = root / "newton_s0_completed"
    with open(run_dir / STEPS_FILE, newline="") as f:
        rows = list(csv.reader(f))
    rows[0] += [column]
    for i, row in enumerate(rows[1:]):
        row.append(value(i))
    with open(run_dir / STEPS_FILE, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_solve_path_axis_shows_every_logged_value(tmp_path: Path) -> None:
    newton = importlib.import_module("second_order.optim.newton")
    assert (newton.CHOLESKY, newton.EIGH_PINV, newton.LOW_RANK) == tuple(SOLVE_PATHS)
    # mostly low rank (2), the value the old axis cut off
    newton_run_logging(tmp_path, "solve_path", lambda i: str(2 if i % 3 else 1))
    fig = plot_diagnostics(load_runs([tmp_path]), NEWTON_PANELS, "Exact Newton")
    assert fig is not None
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 0 and hi > 2
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Cholesky", "eigh pinv", "low rank"]
    assert list(ax.get_yticks()) == [0, 1, 2]


def test_not_computed_diagnostics_are_gaps(tmp_path: Path) -> None:
    """``inf`` (Newton's min_eigenvalue on its Cholesky steps) is missing, as NaN: no point, no axis to inf."""
    # Cholesky steps (inf) between eigen steps
    newton_run_logging(tmp_path, "min_eigenvalue", lambda i: "inf" if i % 2 else repr(-0.5 - i))
    fig = plot_diagnostics(load_runs([tmp_path]), NEWTON_PANELS, "Exact Newton")
    assert fig is not None and len(fig.axes) == 1  # the one logged column
    y = np.asarray(fig.axes[0].lines[0].get_ydata(), float)
    assert np.isnan(y[1::2]).all() and np.isfinite(y[::2]).all()
    lo, hi = fig.axes[0].get_ylim()
    assert -35 < lo < -28.5 and -0.5 < hi < 1.0  # the finite values with a margin


# ------------------------------------------------------- number formatting in tables


def test_fmt_switches_to_scientific_for_huge_and_tiny_values() -> None:
    assert fmt_mean_std(5371457.8531, 9055133.6064, 4) == "5.37e+06 ± 9.06e+06"
    assert fmt_mean_std(3900636070.796, 6468905402.6461, 4) == "3.90e+09 ± 6.47e+09"
    assert fmt_mean_std(-12345.0, 10.0, 4) == "-1.23e+04 ± 1.00e+01"  # the mean decides for both
    assert fmt_mean_std(0.5, 2e4, 4) == "5.00e-01 ± 2.00e+04"  # so does a huge std
    assert fmt_mean_std(2.5e-5, 1e-6, 4) == "2.50e-05 ± 1.00e-06"
    assert fmt_mean_std(0.2250, 0.0028, 4) == "0.2250 ± 0.0028"  # ordinary values: fixed decimals
    assert fmt_mean_std(0.2250, 0.00002, 4) == "0.2250 ± 2.00e-05"  # not "± 0.0000"
    assert fmt_mean_std(97.5, 0.0, 2) == "97.50 ± 0.00"  # zero stays plain
    assert fmt_mean_std(9999.5, 1.0, 2) == "9999.50 ± 1.00"
    assert fmt_mean_std(5371457.8531, math.nan, 4) == "5.37e+06"  # one seed
    assert fmt_mean_std(math.nan, 1.0, 4) == "—"
    assert fmt_num(1e4, 2) == "1.00e+04" and fmt_num(9.99e-4, 4) == "9.99e-04" and fmt_num(1e-3, 4) == "0.0010"
    assert fmt_num(21257.0, 0, large=False) == "21257"  # seconds stay whole numbers
    assert fmt_mean_std(34933.0, 1234.4, 0, large=False) == "34933 ± 1234"
    assert fmt_num(math.inf, 2) == "—"


def test_diverged_loss_is_readable_in_markdown_and_exact_in_csv(tmp_path: Path) -> None:
    losses = {"newton": [5.1, 1.6e6, 1.45e7], "sgd": [2.1e-5, 3.4e-5], "hessian_free": [0.2515, 0.2601]}
    for method, values in losses.items():
        for seed, value in enumerate(values):
            write_run(tmp_path, method, seed, n_steps=60, summary_extra={"train_loss": value})
    table = train_loss_table(load_runs([tmp_path]))
    cells = {rec["method"]: row[2] for rec, row in zip(table.records, table.rows)}
    stats = {m: (float(np.mean(v)), float(np.std(v, ddof=1))) for m, v in losses.items()}
    m, s = stats["newton"]
    assert cells["newton"] == f"{m:.2e} ± {s:.2e}" == "5.37e+06 ± 7.95e+06"
    m, s = stats["sgd"]
    assert cells["sgd"] == f"{m:.2e} ± {s:.2e}"
    assert cells["hessian_free"] == "0.2558 ± 0.0061"
    markdown = table.markdown()
    assert "5.37e+06 ± 7.95e+06" in markdown and "5366668" not in markdown

    table.write(tmp_path / "out")
    with open(tmp_path / "out" / "table2_train_loss.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    for method, (m, s) in stats.items():  # full precision: round-trips to the very same floats
        assert float(rows[method]["mean"]) == pytest.approx(m, rel=1e-15)
        assert float(rows[method]["std"]) == pytest.approx(s, rel=1e-15)
    newton = next(r for r in table.records if r["method"] == "newton")
    assert rows["newton"]["mean"] == repr(newton["mean"])


def test_a_log_loss_axis_averages_log_loss_and_keeps_its_band(tmp_path: Path) -> None:
    """Two seeds at 1e3 and 1e7: on a log axis the line is their geometric mean 1e5 and the band
    exp(mean ± std of log L) stays > 0 (the arithmetic mean − std was negative, so no band was drawn);
    a one-step spike of 1e12 no longer fills its whole moving-average window."""
    from second_order.suite.report.curves import loss_curve

    root = tmp_path / "runs"
    for seed, level in ((0, 1e3), (1, 1e7)):
        write_run(root, "newton", seed, n_steps=100, status="budget")
        loss = np.full(100, level)
        if seed == 0:
            loss[10] = 1e12
        path = root / f"newton_s{seed}_budget" / STEPS_FILE
        path.unlink()
        log = CsvLog(path, ("step", "epoch", "train_loss", "time_s"))
        log.write_rows(zip(range(1, 101), [0] * 100, loss, 0.01 * np.arange(1, 101)))
        log.close()
    runs = load_runs([root])
    curve = loss_curve(runs, smooth=50, log=True)
    assert curve is not None and curve.lo is not None and curve.hi is not None
    np.testing.assert_allclose(curve.y[-1], 1e5, rtol=1e-9)  # steps 51..100: no spike left in the window
    sd = np.std(np.log([1e3, 1e7]), ddof=1)
    np.testing.assert_allclose([curve.lo[-1], curve.hi[-1]], [1e5 * np.exp(-sd), 1e5 * np.exp(sd)], rtol=1e-9)
    spiked = 1e3 * (1e12 / 1e3) ** (1 / 11)  # seed 0 at the spike: the geometric mean of its first 11 steps
    np.testing.assert_allclose(curve.y[10], np.sqrt(spiked * 1e7), rtol=1e-9)  # (an arithmetic one: 9e10)
    fig = plot_loss_vs_step(runs, smooth=50)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "geometric" in ax.get_ylabel()
    assert ax.collections, "the ±1 std band is drawn"


def test_end_markers_are_explained_once_in_the_legend(tmp_path: Path) -> None:
    """Three methods stopped by their budget near one step: one legend entry, no label per method."""
    from matplotlib.collections import PolyCollection

    from second_order.suite.report.figures import plot_accuracy_vs_epoch

    root = tmp_path / "runs"
    for method in ("sgd", "hessian_free", "gauss_newton"):
        write_run(root, method, 0, n_steps=120, per_epoch=50, status="budget")
    write_run(root, "newton", 0, n_steps=90, per_epoch=50, status="diverged", diverge_at=80)
    runs = load_runs([root])
    fig = plot_loss_vs_step(runs, smooth=5)
    labels = _legend_labels(fig)
    assert labels.count("budget end") == 1 and labels.count("diverged") == 1 and "interrupted" not in labels
    assert not [t for t in fig.axes[0].texts if t.get_text()], "no annotation at each end"
    # one evaluation per seed (a 40-step budget, 50 steps per epoch): an error bar, not an invisible band
    for seed in range(3):
        write_run(tmp_path / "one", "newton_damped", seed, n_steps=40, per_epoch=50, status="budget")
    fig = plot_accuracy_vs_epoch(load_runs([tmp_path / "one"]))
    ax = fig.axes[0]
    assert ax.containers and not [c for c in ax.collections if isinstance(c, PolyCollection)]
    (_, _, (bars,)) = ax.containers[0]
    (segment,) = bars.get_segments()
    assert segment[1, 1] > segment[0, 1]  # the bar spans the seeds' spread


def test_a_step_axis_turns_logarithmic_for_a_run_that_stops_early(tmp_path: Path) -> None:
    """20 budget-limited steps beside 600 would be a sliver on a linear axis (fig01's Newton)."""
    write_run(tmp_path / "a", "sgd", 0, n_steps=600, per_epoch=100)
    write_run(tmp_path / "a", "newton", 0, n_steps=20, per_epoch=100, status="budget")
    ax = plot_loss_vs_step(load_runs([tmp_path / "a"]), smooth=5).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "step, log scale"
    write_run(tmp_path / "b", "sgd", 0, n_steps=600, per_epoch=100)
    write_run(tmp_path / "b", "newton", 0, n_steps=300, per_epoch=100, status="budget")
    assert plot_loss_vs_step(load_runs([tmp_path / "b"]), smooth=5).axes[0].get_xscale() == "linear"


def test_the_overview_cuts_its_log_loss_axis_and_marks_an_end_above_it(tmp_path: Path) -> None:
    """A run that blows up 30x before diverging: fig00's log axis stops at 3x the initial loss,
    and the diverged end sits on the top edge as ^, explained once in the legend."""
    from second_order.suite.report.figures import plot_overview

    write_run(tmp_path, "sgd", 0, n_steps=200)
    write_run(tmp_path, "newton", 0, n_steps=200, status="diverged", diverge_at=100)
    fig = plot_overview(load_runs([tmp_path]), smooth=1, loss_cap=3.0)
    ax = fig.axes[0]
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    start = max(float(y[0]) for y in ys if y.size > 1)
    assert ax.get_yscale() == "log" and ax.get_ylim()[1] == pytest.approx(3.0 * start)
    ends = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(ends) == 1 and np.asarray(ends[0].get_ydata(), float)[0] == pytest.approx(3.0 * start)
    assert "end above the axis" in _legend_labels(fig)


def test_ends_above_the_axis_at_one_place_are_set_side_by_side(tmp_path: Path) -> None:
    """Two methods that diverge at the same step: their ^ on the top edge must not hide one another."""
    from second_order.suite.report.ends import MARKER_SIZE

    write_run(tmp_path, "sgd", 0, n_steps=200)
    for method in ("newton", "newton_damped"):
        for seed in (0, 1):  # the seeds of one method end at one place: one marker for them
            write_run(tmp_path, method, seed, n_steps=200, status="diverged", diverge_at=100)
    fig = plot_loss_vs_step(load_runs([tmp_path]), smooth=1, loss_cap=3.0)
    fig.canvas.draw()  # after the layout, as saved
    ax = fig.axes[0]
    ends = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(ends) == 2 and len({line.get_color() for line in ends}) == 2
    (x0, y0), (x1, y1) = (
        line.get_transform().transform((np.asarray(line.get_xdata(), float)[0], np.asarray(line.get_ydata(), float)[0]))
        for line in ends
    )
    assert y0 == pytest.approx(y1)  # both on the top edge
    points = abs(x1 - x0) * 72.0 / fig.dpi
    assert MARKER_SIZE < points < 3 * MARKER_SIZE  # apart, yet next to where the runs ended
