"""The study's measures: time to target on synthetic run files, performance profiles by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from second_order.suite.study.profiles import performance_profile, performance_ratios
from second_order.suite.study.targets import MISSED, median_and_spread, target_from_baselines, time_to_target
from second_order.suite.tracking import runs


def write_evals(run_dir, rows):
    log = runs.CsvLog(run_dir / runs.EVAL_FILE, runs.EVAL_COLUMNS + runs.VALIDATION_COLUMNS)
    log.write_rows(rows)
    log.close()
    return runs.read_table(run_dir / runs.EVAL_FILE)


def test_time_to_target_on_run_files(tmp_path):
    # epoch, step, time_s, test_loss, test_acc, val_loss, val_acc
    evals = write_evals(
        tmp_path,
        [
            (0, 100, 1.0, 0.9, 0.70, 0.95, 0.71),
            (0, 200, 2.5, 0.5, 0.85, 0.52, 0.899),
            (0, 300, 4.0, 0.4, 0.90, 0.41, 0.905),
            (1, 400, 5.5, 0.3, 0.93, 0.30, 0.93),
        ],
    )
    summary = {"compile_time_s": 3.25, "diverged_step": None}
    hit = time_to_target(evals, summary, 0.9, "val_acc")
    assert (hit.steps, hit.seconds, hit.seconds_with_compile) == (300, 4.0, 7.25) and hit.reached
    assert time_to_target(evals, summary, 0.5, "val_loss").steps == 300  # a loss: first value <= target
    assert time_to_target(evals, summary, 0.95, "val_acc") == MISSED and not MISSED.reached
    # A run that diverged before the evaluation that met the target never reached it.
    assert time_to_target(evals, {"compile_time_s": 1.0, "diverged_step": 250}, 0.9, "val_acc") == MISSED
    assert time_to_target({}, summary, 0.9, "val_acc") == MISSED  # no validation columns
    with pytest.raises(ValueError, match="val_acc, val_loss"):
        time_to_target(evals, summary, 0.9, "test_acc")


def test_nan_never_meets_a_target(tmp_path):
    evals = write_evals(tmp_path, [(0, 100, 1.0, math.nan, math.nan, math.nan, math.nan)])
    assert time_to_target(evals, {}, 0.0, "val_loss") == MISSED


def test_targets_and_spread():
    assert target_from_baselines([0.91, 0.93, math.nan], "val_acc") == 0.93
    assert target_from_baselines([0.31, 0.29], "val_loss") == 0.29
    assert median_and_spread([3.0, math.inf, 1.0]) == (3.0, 1.0, math.inf)


def test_performance_profile_by_hand():
    """Three methods on three workloads; τ = 1, 1.5, 2, 4 counted by hand."""
    costs = {
        "a": {"w1": 10.0, "w2": 20.0, "w3": math.inf},
        "b": {"w1": 15.0, "w2": 10.0, "w3": 40.0},
        "c": {"w1": 40.0, "w2": 30.0, "w3": 10.0},
    }
    ratios = performance_ratios(costs)
    assert ratios["a"] == {"w1": 1.0, "w2": 2.0, "w3": math.inf}
    assert ratios["b"] == {"w1": 1.5, "w2": 1.0, "w3": 4.0}
    assert ratios["c"] == {"w1": 4.0, "w2": 3.0, "w3": 1.0}
    profile = performance_profile(costs, [1.0, 1.5, 2.0, 4.0])
    np.testing.assert_allclose(profile["a"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(profile["b"], [1 / 3, 2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(profile["c"], [1 / 3, 1 / 3, 1 / 3, 1.0])


def test_a_workload_nobody_solves_counts_against_everyone():
    profile = performance_profile({"a": {"w1": 1.0, "w2": math.inf}, "b": {"w1": 2.0, "w2": math.inf}}, [1.0, 4.0])
    np.testing.assert_allclose(profile["a"], [0.5, 0.5])
    np.testing.assert_allclose(profile["b"], [0.0, 0.5])


def test_a_best_time_of_zero_is_a_tie_not_infinity():
    """The target met at the first evaluation (t = 0): 0/0 ties at ratio 1, t/0 is unbounded."""
    ratios = performance_ratios({"a": {"w1": 0.0, "w2": 2.0}, "b": {"w1": 0.0, "w2": 1.0}, "c": {"w1": 3.0}})
    assert ratios["a"] == {"w1": 1.0, "w2": 2.0} and ratios["b"] == {"w1": 1.0, "w2": 1.0}
    assert ratios["c"] == {"w1": math.inf, "w2": math.inf}


def test_the_metric_figure_draws_the_median_over_seeds_and_the_target():
    """Two seeds at 0.8/0.9 then 0.95/0.97 accuracy: the line is their median in %, the target dashed."""
    from second_order.suite.study.plots import plot_metric_vs_time
    from second_order.suite.tracking.runs import Run

    def run(seed, acc):
        evals = {"step": np.array([10, 20]), "time_s": np.array([1.0, 2.0]), "val_acc": np.array(acc)}
        summary = {"optimizer": "sgd", "seed": seed}
        return Run(path=Path(f"sgd{seed}"), config={}, summary=summary, steps={}, evals=evals)

    fig = plot_metric_vs_time({"sgd": [run(0, [0.8, 0.95]), run(1, [0.9, 0.97])]}, 0.96, "val_acc", "t")
    ax = fig.axes[0]
    (line, target) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [85.0, 96.0])
    assert ax.get_xscale() == "log" and target.get_linestyle() == "--"
    np.testing.assert_allclose(target.get_ydata(), [96.0, 96.0])
    assert "target: val_acc ≥ 96" in [t.get_text() for t in ax.get_legend().get_texts()][-1]


def test_a_method_that_solves_nothing_is_named_under_the_profile_not_drawn():
    """A line at ρ = 0 would hide under the axis: the method is named in the x label instead."""
    from second_order.suite.study.plots import plot_profiles

    costs = {"sgd": {"w": 1.0}, "adam": {"w": 2.0}, "kfac": {"w": math.inf}}
    ax = plot_profiles({"optimizer seconds": costs}).axes[0]
    assert len([line for line in ax.get_lines() if line.get_linestyle() != ":"]) == 2
    assert "solve no workload" in ax.get_xlabel() and "K-FAC" in ax.get_xlabel() and "SGD" not in ax.get_xlabel()


# --------------------------------------------------------------------------- end to end


SMOKE = """
name: smoke
methods: [sgd, hessian_free, adam]
exclude: {adam: "to test exclusion"}
workloads:
  mnist_mlp: {overrides: [data=mnist, model=mlp], target: null}
target_metric: val_acc
target_baselines: [sgd]
validation_examples: 5000
batch_size: 64
tuning: {trials: 2, epochs: 1, max_steps: 40, keys: [learning_rate, damping], spread: 4.0, sampler_seed: 0,
         startup_trials: 1}
final: {epochs: 1, max_steps: 60, seeds: [0, 1], eval_every_steps: 20}
families: {first-order: [sgd, adam], Hessian-free (Krylov): [hessian_free]}
"""


@pytest.mark.slow
def test_study_end_to_end_tunes_times_and_reports(real_mnist_dir, tmp_path, monkeypatch):
    """A tiny study through scripts/study.py: Optuna tuning (the objective returned by train.py),
    timed final runs, time to target, profiles and the written summary."""
    import importlib.util

    import yaml
    from conftest import REPO

    monkeypatch.setenv("MNIST_DIR", str(real_mnist_dir))
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    spec = importlib.util.spec_from_file_location("study_script", REPO / "scripts" / "study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root, out = tmp_path / "runs", tmp_path / "results"
    argv = ["--study", str(config), "--root", str(root), "--out", str(out), "trainer.checkpoint_every_s=600"]
    assert script.main(argv) == 0

    # Tuning: the sweeper minimised what train.py returned, the final validation loss of each trial.
    tuned = yaml.safe_load((root / "tune" / "mnist_mlp" / "hessian_free" / "optimization_results.yaml").read_text())
    assert set(tuned["best_params"]) == {"optimizer.learning_rate", "optimizer.damping"}
    trials = [runs.read_summary(p) for p in sorted((root / "tune" / "mnist_mlp" / "hessian_free").glob("trial*"))]
    assert len(trials) == 2 and all(t["objective_metric"] == "val_loss" for t in trials)
    assert tuned["best_value"] == pytest.approx(min(t["objective"] for t in trials))
    assert trials[0]["validation_examples"] == 5000 and trials[0]["train_examples"] == 55000
    first = yaml.safe_load((root / "tune" / "mnist_mlp" / "hessian_free" / "trial0" / runs.CONFIG_FILE).read_text())
    defaults = yaml.safe_load((REPO / "configs" / "optimizer" / "hessian_free.yaml").read_text())
    for key in ("learning_rate", "damping"):  # trial 0 tries the configured values (the ranges' centres)
        assert first["optimizer"][key] == pytest.approx(defaults[key], rel=1e-5), key
    assert first["seed"] == 1000  # the tuning seed, never a final one
    assert not (root / "tune" / "mnist_mlp" / "adam").exists()  # excluded

    # Final runs: both seeds, validation every 20 steps, the tuned parameters.
    final = root / "final" / "mnist_mlp" / "hessian_free"
    for seed in (0, 1):
        evals = runs.read_table(final / f"seed{seed}" / runs.EVAL_FILE)
        np.testing.assert_array_equal(evals["step"], [20, 40, 60])
        cfg = yaml.safe_load((final / f"seed{seed}" / runs.CONFIG_FILE).read_text())
        assert cfg["optimizer"]["damping"] == pytest.approx(tuned["best_params"]["optimizer.damping"])
        assert cfg["trainer"]["checkpoint_every_s"] == 600  # the command line's extra override reached every job

    for name in ("tuning.md", "time_to_target.md", "time_to_target.csv", "summary.md",
                 "performance_profile.png", "loss_vs_time_mnist_mlp.png", "val_acc_vs_time_mnist_mlp.png"):  # fmt: skip
        assert (out / name).stat().st_size > 100, name
    summary = (out / "summary.md").read_text()
    assert "**Verdict.**" in summary and "median final val_acc of tuned sgd" in summary
    assert "`val_acc_vs_time_<workload>.png` (the target drawn)" in summary
    # the basic launcher ran the final runs one after another, and their records show it
    checked = "one at a time (checked from their records: no two shared a machine at once), timed on "
    assert f"seeds 0, 1, {checked}" in summary
    assert "hessian_free" in (out / "time_to_target.md").read_text()

    # Resumable: a second invocation finds everything on disk and trains nothing.
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("steps.csv"))
    argv = ["--study", str(config), "--root", str(root), "--out", str(out), "trainer.checkpoint_every_s=600"]
    assert script.main(argv) == 0
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("steps.csv")) == before


def load_study_script():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("study_script", REPO / "scripts" / "study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_report_without_runs_is_an_error_and_keeps_the_report(tmp_path, capsys):
    """--phase report with no final runs under the root: one error line naming the root and how to make
    runs, exit status 1 (as make_figures.py without runs), and the existing report untouched."""
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.report import NoStudyRuns, write_report

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.md").write_text("the committed report\n")
    script = load_study_script()
    for root in (tmp_path / "nothing", tmp_path / "tuned_only"):
        if root.name == "tuned_only":  # tuning happened, no final run: still nothing to report
            (root / "tune" / "mnist_mlp" / "sgd").mkdir(parents=True)
            (root / "final" / "mnist_mlp").mkdir(parents=True)
        argv = ["--study", str(config), "--root", str(root), "--out", str(out), "--phase", "report"]
        assert script.main(argv) == 1
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert line.startswith(f"error: no runs found under {root}; nothing to report"), line
        assert f"python scripts/study.py --study {config} --root {root}" in line
        assert "wrote" not in captured.out and "done:" not in captured.out
        assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
        assert (out / "summary.md").read_text() == "the committed report\n"
    fresh = tmp_path / "never_created"
    with pytest.raises(NoStudyRuns, match="no runs found under"):
        write_report(load_study(config), tmp_path / "nothing", fresh)
    assert not fresh.exists()


def test_an_unknown_study_names_the_configs_there_are(capsys):
    script = load_study_script()
    assert script.main(["--study", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --study nosuch: no such study config configs/study/nosuch.yaml; choose one of cpu, full "
        "(configs/study/) or give a YAML path"
    )


def test_a_stopped_study_is_one_line_and_the_signal_status(monkeypatch, tmp_path, capsys):
    import subprocess

    from second_order.suite.study import runner

    def stopped(*args, **kwargs):
        raise subprocess.CalledProcessError(130, ["train.py"])

    monkeypatch.setattr(runner, "run_study", stopped)
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    assert load_study_script().main(["--study", str(config), "--root", str(tmp_path / "runs")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: the study was stopped by a signal (exit status 130); run the same command again to go on "
        "(finished runs are kept)"
    ]


def test_report_without_runs_names_make_study_for_the_default(monkeypatch, tmp_path):
    script = load_study_script()
    monkeypatch.setattr(script, "REPO", tmp_path)  # the default root runs/study/cpu below an empty checkout
    args = script.parse_args(["--phase", "report", "--out", str(tmp_path / "results" / "study")])
    message = script.no_runs_message(args, tmp_path / "runs" / "study" / "cpu")
    assert message.startswith("error: no runs found under runs/study/cpu; nothing to report (results/study left")
    assert "`python scripts/study.py --study cpu` (every phase, i.e. `make study`)" in message


def test_bad_study_configs_are_one_line(tmp_path):
    from second_order.suite.study.plan import StudyError, load_study

    cases = {
        "exclude: {nosuch: x}\nworkloads: {w: {overrides: []}}\nvalidation_examples: 1\n"
        "tuning: {trials: 1, keys: [lr]}\nfinal: {seeds: [0]}": "exclude names unknown optimizers ['nosuch']",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr]}\n"
        "final: {seeds: [0], launcher: joblib}": "the timed final runs must run one at a time",
        "workloads: {w: {}}\nvalidation_examples: 0\ntuning: {trials: 1, keys: [lr]}\nfinal: {seeds: [0]}":
            "validation_examples must be >= 1",
        "workloads: {}\n": "workloads is empty",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr]}\nfinal: {seeds: [0, 0]}":
            "repeats a seed",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr], seed: 2}\n"
        "final: {seeds: [1, 2]}": "would replay the trial it was selected on",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr]}\nfinal: {seeds: [0]}\n"
        "target_baselines: [adamw]": "target_baselines ['adamw'] are not among the study's methods",
        "workloads: {w: }\n": "workloads.w = None: give its overrides and target",
        "workloads: {w: {overrides: [], traget: 0.9}}\n": "workloads.w has unknown keys ['traget']",
        "workloads: {w: {overrides: data=mnist}}\n": "workloads.w.overrides = 'data=mnist': a list",
        "workloads: {w: {target: high}}\n": "workloads.w.target = 'high': a number, or null",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1}\nfinal: {seeds: [0]}":
            "tuning.keys = None: list the optimizer keys to tune",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr], spread: 1}\nfinal: {seeds: [0]}":
            "tuning.spread = 1: a factor > 1",
        "workloads: {w: {}}\nvalidation_examples: 1\ntuning: {trials: 1, keys: [lr], startup_trials: -1}\n"
        "final: {seeds: [0]}": "tuning.startup_trials = -1: the number of random trials before TPE",
    }  # fmt: skip
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_study(path)


def test_search_space_follows_each_optimizer_config():
    from conftest import REPO

    from second_order.suite.study.plan import load_study, search_space, sweeper_overrides

    assert search_space("sgd", ["learning_rate", "damping"], 10.0) == {"optimizer.learning_rate": (0.01, 1.0)}
    hf = search_space("hessian_free", ["learning_rate", "damping"], 10.0)
    assert set(hf) == {"optimizer.learning_rate", "optimizer.damping"}
    assert "optimizer.max_radius" in search_space("trust_region_cg", ["learning_rate", "max_radius"], 10.0)
    overrides = sweeper_overrides(hf, {"trials": 3})
    assert "hydra/sweeper=optuna" in overrides and "hydra.sweeper.n_trials=3" in overrides
    assert any(o.startswith("optimizer.damping=tag(log, interval(") for o in overrides)
    cpu = load_study(REPO / "configs" / "study" / "cpu.yaml")
    assert "newton" not in cpu.methods and "kfac" in cpu.methods and cpu.family("kfac") == "Kronecker-factored"


def test_validation_split_is_fixed_disjoint_and_never_the_test_set():
    from second_order.suite.data import Mnist
    from second_order.suite.splits import hold_out

    images = np.arange(100, dtype=np.float32).reshape(100, 1)
    data = Mnist(images, np.arange(100) % 10, images[:5] + 1000, np.arange(5))
    train, (val_x, val_y) = hold_out(data, 30)
    again, (val_x2, _) = hold_out(data, 30)
    assert len(train.train_labels) == 70 and len(val_y) == 30
    np.testing.assert_array_equal(val_x, val_x2)  # the same split every time (not the run seed's)
    assert set(train.train_images[:, 0]).isdisjoint(val_x[:, 0])
    assert set(train.train_images[:, 0]) | set(val_x[:, 0]) == set(range(100))
    np.testing.assert_array_equal(train.test_images, data.test_images)
    assert hold_out(data, 0) == (data, None)
    with pytest.raises(ValueError, match="cannot hold out 100 of 100"):
        hold_out(data, 100)


def test_a_validation_split_larger_than_the_training_set_is_a_config_error():
    from conftest import compose_config

    from second_order.suite.config import ConfigError, validate
    from second_order.suite.data import Mnist
    from second_order.suite.experiment import check_data

    rc = validate(compose_config(["data.validation_examples=100"]))
    data = Mnist(np.zeros((100, 784), np.float32), np.arange(100) % 10, np.zeros((5, 784), np.float32), np.arange(5))
    with pytest.raises(ConfigError, match="data.validation_examples = 100 is invalid: must be less than the 100"):
        check_data(rc, data)
    rc = validate(compose_config(["data.validation_examples=50", "trainer.batch_size=64"]))
    with pytest.raises(ConfigError, match="trainer.batch_size = 64 is invalid: must be at most the 50"):
        check_data(rc, data)


def _final_run(where, seed: int, status: str) -> None:
    """A final run folder with only what the report and the runner read: summary and a validation row."""
    where.mkdir(parents=True)
    runs.write_json(where / runs.SUMMARY_FILE, {"optimizer": "sgd", "seed": seed, "status": status})
    write_evals(where, [(0, 60, 1.0, 0.5, 0.9, 0.5, 0.9)])
    log = runs.CsvLog(where / runs.STEPS_FILE, runs.STEP_COLUMNS)
    log.write_rows([(60, 0, 0.5, 1.0)])
    log.close()


def test_the_final_phase_launches_only_the_seeds_not_yet_ended(tmp_path):
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.runner import final, final_dir

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    study = load_study(config)
    where = final_dir(tmp_path, study.workloads[0]) / "sgd"
    _final_run(where / "seed0", 0, "diverged")  # ended for good: never retrained and timed anew
    _final_run(where / "seed1", 1, "interrupted")
    launched: list[list[str]] = []
    final(study, study.workloads[0], "sgd", {}, tmp_path, run=launched.append)
    (args,) = launched
    assert "seed=1,2" in args


def test_finished_work_made_with_other_settings_is_refused_not_reused(tmp_path):
    """A final run tuned to lr 0.1, a study now at lr 0.2: the runner names the directory and the
    change instead of reporting the old runs as the new settings' results (same for a tuning)."""
    from second_order.suite.study.plan import StudyError, load_study
    from second_order.suite.study.runner import PLAN_FILE, final, final_dir, tune

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    workload = study.workloads[0]
    launched: list[list[str]] = []
    final(study, workload, "sgd", {"optimizer.learning_rate": 0.1}, tmp_path, run=launched.append)
    where = final_dir(tmp_path, workload) / "sgd"
    for seed in (0, 1):
        _final_run(where / f"seed{seed}", seed, "completed")
    final(study, workload, "sgd", {"optimizer.learning_rate": 0.1}, tmp_path, run=launched.append)
    assert len(launched) == 1  # same settings, every seed ended: nothing to do
    with pytest.raises(StudyError, match=r"sgd was run with other settings \(then: optimizer.learning_rate=0.1; "
                                         r"now: optimizer.learning_rate=0.2\); delete"):  # fmt: skip
        final(study, workload, "sgd", {"optimizer.learning_rate": 0.2}, tmp_path, run=launched.append)
    assert len(launched) == 1 and (where / PLAN_FILE).exists()

    tuned = tmp_path / "tune" / workload.name / "sgd"

    def sweep(args):  # the Optuna sweep's one output the runner reads
        launched.append(args)
        (tuned / "optimization_results.yaml").write_text("best_params: {optimizer.learning_rate: 0.3}\n")

    assert tune(study, workload, "sgd", tmp_path, run=sweep) == {"optimizer.learning_rate": 0.3}
    assert tune(study, workload, "sgd", tmp_path, run=sweep) == {"optimizer.learning_rate": 0.3}
    assert len(launched) == 2  # the second call found the finished tuning
    config.write_text(SMOKE.replace("spread: 4.0", "spread: 2.0"))
    with pytest.raises(StudyError, match="sgd was tuned with other settings"):
        tune(load_study(config), workload, "sgd", tmp_path, run=launched.append)


def test_extra_command_line_overrides_are_part_of_the_plan_but_logging_ones(tmp_path):
    """``scripts/study.py ... model.hidden=20``: finished work made without it is refused, while
    logging and launcher overrides (how a job runs, not what it computes) may change."""
    from second_order.suite.study.plan import StudyError, load_study
    from second_order.suite.study.runner import PLAN_FILE, compared, final, final_dir

    assert compared(["model.hidden=20", "logger.wandb.mode=offline", "+trainer.progress=true"]) == ["model.hidden=20"]
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    workload = study.workloads[0]
    launched: list[list[str]] = []
    extra = ["model.hidden=20", "logger.wandb.mode=offline"]
    final(study, workload, "sgd", {}, tmp_path, run=launched.append, extra=extra)
    assert launched[0][-4:-2] == extra  # every job gets them (the last two: seeds and sweep directory)
    where = final_dir(tmp_path, workload) / "sgd"
    plan = yaml.safe_load((where / PLAN_FILE).read_text())["overrides"]
    assert "model.hidden=20" in plan and not any(o.startswith("logger.wandb.mode=offline") for o in plan)
    final(study, workload, "sgd", {}, tmp_path, run=launched.append, extra=["model.hidden=20"])  # logging changed: fine
    with pytest.raises(StudyError, match=r"sgd was run with other settings \(then: model.hidden=20; now: -\)"):
        final(study, workload, "sgd", {}, tmp_path, run=launched.append)


def test_the_report_scores_only_the_studys_seeds_that_ended(tmp_path):
    from second_order.suite.report.loading import ReportWarning
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.report import final_runs
    from second_order.suite.study.runner import final_dir

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    where = final_dir(tmp_path, study.workloads[0]) / "sgd"
    _final_run(where / "seed0", 0, "completed")
    _final_run(where / "seed1", 1, "diverged")
    _final_run(where / "seed7", 7, "completed")  # not one of the study's seeds (0, 1)
    _final_run(where / "old" / "seed0", 0, "completed")  # a stale copy elsewhere in the folder
    with pytest.warns(ReportWarning) as caught:
        found = final_runs(study, tmp_path)
    assert sorted(str(w.message).split(":")[0] for w in caught) == [str(where / "old" / "seed0"), str(where / "seed7")]
    assert [r.path for r in found["mnist_mlp"]["sgd"]] == [where / "seed0", where / "seed1"]
    (where / "seed1" / runs.SUMMARY_FILE).write_text('{"optimizer": "sgd", "seed": 1, "status": "failed"}')
    with pytest.warns(ReportWarning) as caught:
        assert [r.seed for r in final_runs(study, tmp_path)["mnist_mlp"]["sgd"]] == [0]
    assert sum("not scored" in str(w.message) for w in caught) == 3
    assert any("seed1: not scored (status failed" in str(w.message) for w in caught)


def test_a_failed_method_is_left_out_and_the_study_goes_on(tmp_path, capsys):
    """Every trial of one method refused (its multirun exits 1): named in failed.yaml, the summary and
    stderr, and the other methods still run; a signal (exit 130) stops the study."""
    import subprocess
    from pathlib import Path

    import yaml

    from second_order.suite.study.plan import TUNING_SEED, load_study
    from second_order.suite.study.report import _failed_section
    from second_order.suite.study.runner import run_study

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    launched: list[list[str]] = []

    def runner(args):
        launched.append(list(args))
        if "optimizer=hessian_free" in args:
            raise subprocess.CalledProcessError(1, ["train.py"])
        (where,) = (Path(a.split("=", 1)[1]) for a in args if a.startswith("hydra.sweep.dir="))
        where.mkdir(parents=True, exist_ok=True)
        (where / "optimization_results.yaml").write_text("best_params: {optimizer.learning_rate: 0.1}\n")

    run_study(study, tmp_path, phases=("tune",), run=runner)
    assert [a[0] for a in launched] == ["optimizer=sgd", "optimizer=hessian_free"]
    assert all(f"seed={TUNING_SEED}" in a for a in launched)  # tuning never uses a final seed
    assert yaml.safe_load((tmp_path / "failed.yaml").read_text()) == {"mnist_mlp": {"hessian_free": "exit status 1"}}
    assert "hessian_free on mnist_mlp failed (exit status 1); left out" in capsys.readouterr().err
    assert "- hessian_free on mnist_mlp: exit status 1" in _failed_section(tmp_path)

    def fixed(args):  # the failure is mended: a rerun runs every method, and failed.yaml goes
        if "optimizer=hessian_free" in args:
            (where,) = (Path(a.split("=", 1)[1]) for a in args if a.startswith("hydra.sweep.dir="))
            where.mkdir(parents=True, exist_ok=True)
            (where / "optimization_results.yaml").write_text("best_params: {optimizer.learning_rate: 0.1}\n")

    run_study(study, tmp_path, phases=("tune",), run=fixed)
    assert not (tmp_path / "failed.yaml").exists() and _failed_section(tmp_path) == ""

    def interrupted(args):
        raise subprocess.CalledProcessError(130, ["train.py"])

    with pytest.raises(subprocess.CalledProcessError):
        run_study(study, tmp_path / "again", phases=("tune",), run=interrupted)


def test_tuning_tries_the_configured_values_first_then_tpe():
    """Trial 0 of every study search sits at each range's centre (the optimizer config's value);
    the later trials are TPE's, seeded, so a rerun suggests the same points."""
    import optuna

    from second_order.suite.study.plan import sweeper_overrides
    from second_order.suite.study.sampler import CentreFirstSampler, centre

    assert "hydra.sweeper.sampler._target_=second_order.suite.study.sampler.CentreFirstSampler" in sweeper_overrides(
        {}, {"trials": 4}
    )
    # TPE's own start-up count unless tuning.startup_trials sets it (then the sampler gets it)
    assert not any("n_startup_trials" in o for o in sweeper_overrides({}, {"trials": 4}))
    assert "hydra.sweeper.sampler.n_startup_trials=2" in sweeper_overrides({}, {"trials": 4, "startup_trials": 2})
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def points(seed, startup=10):
        study = optuna.create_study(sampler=CentreFirstSampler(seed=seed, n_startup_trials=startup))
        study.optimize(lambda t: (t.suggest_float("lr", 0.01, 1.0, log=True) - 0.3) ** 2
                       + t.suggest_float("m", 0.0, 1.0) + t.suggest_int("k", 1, 9), n_trials=4)  # fmt: skip
        return [(t.params["lr"], t.params["m"], t.params["k"]) for t in study.trials]

    first, *rest = points(0)
    assert first[0] == pytest.approx(0.1) and first[1] == 0.5 and first[2] == 5
    assert points(0)[1:] == rest and len(set(rest)) == 3  # seeded, and not the centre again
    modelled = points(0, startup=2)  # trial 0 and one random trial, then TPE's model of them
    assert modelled[:2] == [first, rest[0]] and modelled[2:] != rest[1:]
    assert centre(optuna.distributions.CategoricalDistribution(["a", "b"])) == "a"


def test_a_diverged_baseline_seed_counts_as_worst_and_no_target_is_a_warning(tmp_path):
    from second_order.suite.report.loading import ReportWarning
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.report import targets

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)

    def run(value):
        return runs.Run(tmp_path, {}, {"val_acc": value}, {}, {})

    # sgd seeds 0.99, 0.97 and one NaN (diverged): median 0.97, not NaN (which dropped the baseline)
    goal = targets(study, {"mnist_mlp": {"sgd": [run(0.99), run(0.97), run(float("nan"))]}})
    assert goal["mnist_mlp"][0] == pytest.approx(0.97)
    with pytest.warns(ReportWarning, match="mnist_mlp: no target"):
        assert targets(study, {"mnist_mlp": {"sgd": [run(float("nan"))]}}) == {}


def test_the_final_phase_alone_leaves_out_methods_not_tuned_yet(tmp_path, capsys):
    """``--phase final`` before a method's tuning finished: left out and named, never timed with its
    defaults (which the report would show as tuned, and which its finished tuning would then refuse)."""
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.runner import FAILED_FILE, TUNING_RESULTS, run_study, tune_dir

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    workload = study.workloads[0]
    tuned = tune_dir(tmp_path, workload, "sgd")
    tuned.mkdir(parents=True)
    (tuned / TUNING_RESULTS).write_text("best_params: {optimizer.learning_rate: 0.3}\n")
    tune_dir(tmp_path, workload, "hessian_free").mkdir(parents=True)  # an interrupted tuning: no results
    launched: list[list[str]] = []
    best = run_study(study, tmp_path, phases=("final",), run=launched.append)
    assert [a[0] for a in launched] == ["optimizer=sgd"] and "optimizer.learning_rate=0.3" in launched[0]
    assert best == {"mnist_mlp": {"sgd": {"optimizer.learning_rate": 0.3}}}
    failed = yaml.safe_load((tmp_path / FAILED_FILE).read_text())
    assert list(failed) == ["mnist_mlp"] and list(failed["mnist_mlp"]) == ["hessian_free"]
    assert failed["mnist_mlp"]["hessian_free"].startswith("not tuned (") and "run --phase tune first" in (
        capsys.readouterr().err
    )


def test_a_family_that_missed_is_named_by_its_method_with_the_most_seeds_at_target():
    from types import SimpleNamespace

    from second_order.suite.study.summary import fastest_by_family, headline
    from second_order.suite.study.targets import TimeToTarget

    families = {"first-order": ("sgd",), "diagonal curvature": ("adahessian", "online_parabola")}
    study = SimpleNamespace(families=families, family=lambda m: next(f for f, ms in families.items() if m in ms))
    hit = TimeToTarget(100, 2.0, 3.0)
    per = {  # every median is ∞; online_parabola reached the target on 1 seed, adahessian on none
        "sgd": [hit, hit, MISSED],
        "adahessian": [MISSED, MISSED, MISSED],
        "online_parabola": [MISSED, hit, MISSED],
    }
    assert fastest_by_family(study, per)["diagonal curvature"] == ("online_parabola", math.inf)
    table = headline(study, {"w": per})
    assert table[2] == "| first-order | sgd: 2.00 s (1.00×) |"
    assert table[3] == "| diagonal curvature | online_parabola: missed (reached on 1 of 3 seeds) |"
