"""``make reproduce``: what each sweep is asked to run (the sweeps themselves are tested in test_pipeline)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from conftest import REPO


def _reproduce() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_newton_gets_a_step_budget_not_a_time_budget():
    """A step budget gives the same results on a quiet and a busy machine (a time budget does not)."""
    rep = _reproduce()
    args = rep.parse_args(["data.dir=/d"])
    overrides = rep.newton_overrides(args, ["data.dir=/d"])
    assert overrides == ["data.dir=/d", "trainer.max_steps=100"]
    assert not any(o.startswith("trainer.max_time_s") for o in overrides)


def test_newton_budget_options():
    rep = _reproduce()
    smoke = rep.parse_args(["--max-steps", "3"])
    assert rep.newton_overrides(smoke, ["trainer.max_steps=3"]) == ["trainer.max_steps=3"]
    timed = rep.parse_args(["--newton-budget-s", "60"])
    assert rep.newton_overrides(timed, []) == ["trainer.max_time_s=60.0"]
    full = rep.parse_args(["--full"])
    assert rep.newton_overrides(full, ["x=1"]) == ["x=1"]


def test_the_run_roots_follow_the_flags():
    rep = _reproduce()
    assert rep.run_roots(rep.parse_args([])) == [REPO / "runs" / "paper"]
    both = rep.run_roots(rep.parse_args(["--beyond-paper", "--baselines"]))
    assert both == [REPO / "runs" / "paper", REPO / "runs" / "beyond_paper", REPO / "runs" / "baselines"]
    assert rep.run_roots(rep.parse_args(["--curvature"]))[-1] == REPO / "runs" / "curvature"


def test_curvature_sweeps_measure_exact_newton_more_often(monkeypatch, tmp_path):
    """--curvature: the preset's methods at every 100 steps, exact Newton (100-step budget) every 10."""
    rep = _reproduce()
    calls = []
    monkeypatch.setattr(rep, "sweep", lambda root, methods, seeds, extra, experiment="paper": calls.append(
        (root.name, methods, seeds, list(extra), experiment)))  # fmt: skip
    monkeypatch.setattr(rep.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(rep, "write_manifest", lambda *a, **k: None)
    roots = ["--runs", str(tmp_path / "paper"), "--curvature-runs", str(tmp_path / "curvature")]
    assert rep.main(["--curvature", "--out", str(tmp_path), *roots]) == 0
    curvature = [c for c in calls if c[4] == "curvature"]
    assert [c[1] for c in curvature] == [rep.CURVATURE, rep.NEWTON_METHODS] and all(c[2] == "0" for c in curvature)
    assert "diagnostics.every_steps=10" in curvature[1][3] and "trainer.max_steps=100" in curvature[1][3]


def test_the_manifest_names_a_make_command_a_user_can_paste():
    """The script's flags go through make's ARGS (``make reproduce --baselines`` would be a make option)."""
    rep = _reproduce()
    assert rep.make_command(rep.parse_args([])) == "make reproduce"
    assert rep.make_command(rep.parse_args(["--full"])) == "make reproduce FULL=1"
    both = rep.parse_args(["--paper-precision", "--baselines", "--curvature"])
    assert rep.make_command(both) == 'make reproduce ARGS="--paper-precision --baselines --curvature"'


def test_a_failed_sweep_is_one_line_and_its_status(monkeypatch, capsys):
    """The job prints its own error; reproduce adds one line, no traceback, and the job's status."""
    import subprocess

    import pytest

    rep = _reproduce()
    for returncode, status, words in ((2, 2, "failed with exit status 2"), (-15, 143, "was stopped by a signal")):

        def failing(*args, code=returncode, **kwargs):
            raise subprocess.CalledProcessError(code, ["train.py"])

        monkeypatch.setattr(rep, "sweep", failing)
        assert rep.main([]) == status
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: a training sweep " + words), err
    with pytest.raises(SystemExit):
        rep.parse_args(["--seeds", "0,x"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_failed_runs_never_draw_over_the_results(monkeypatch, tmp_path, capsys):
    """A sweep goes on past a failed job (e.g. no data): reproduce then stops before the figures,
    leaving --out as it is, and names a failed run and its error (exit status 1)."""
    from second_order.suite.tracking import runs

    rep = _reproduce()
    roots = tmp_path / "runs"

    def sweep(root, methods, seeds, extra, experiment="paper"):
        for method in methods.split(","):
            (root / method / "seed0").mkdir(parents=True)
            runs.write_json(root / method / "seed0" / runs.SUMMARY_FILE,
                            {"optimizer": method, "seed": 0, "status": "failed", "error": "no data"})  # fmt: skip

    drawn = []
    monkeypatch.setattr(rep, "sweep", sweep)
    monkeypatch.setattr(rep.subprocess, "run", lambda *a, **k: drawn.append(a))
    out = tmp_path / "results"
    assert rep.main(["--runs", str(roots), "--out", str(out)]) == 1
    assert not drawn and not out.exists()
    err = capsys.readouterr().err
    assert "5 run(s) failed, e.g. " in err and "gauss_newton/seed0: no data" in err and "left as it is" in err


def test_a_launcher_that_runs_jobs_at_once_is_refused_before_any_sweep(monkeypatch, tmp_path, capsys):
    """Parallel jobs on one machine would distort the figures per optimizer-second: exit 2, nothing run."""
    rep = _reproduce()
    launched = []
    monkeypatch.setattr(rep, "sweep", lambda *a, **k: launched.append(a))
    out = tmp_path / "results"
    for launcher in ("parallel", "local_processes"):
        assert rep.main(["--runs", str(tmp_path / "runs"), "--out", str(out), f"hydra/launcher={launcher}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: hydra/launcher={launcher} (")
        assert "runs a sweep's jobs at once on this machine: the timed runs" in err[0]
        assert "hydra/launcher=slurm_gpu" in err[0]
    assert rep.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "hydra/launcher=paralel"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # a misspelt launcher: one line with the choices
    assert "Could not find 'hydra/launcher/paralel'" in line and "parallel slurm_gpu" in line
    assert "Config search path" not in line
    assert not launched and not out.exists()
    monkeypatch.setattr(rep, "failed_runs", lambda roots: [("x", "stop here")])
    assert rep.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "hydra/launcher=slurm_gpu"]) == 1
    assert len(launched) == 2  # a SLURM launcher goes on to the sweeps
