"""Timed runs that shared a machine at once: found from the run files, refused and reported by the study."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_study import SMOKE, _final_run

from second_order.suite.report.loading import ReportWarning, load_runs
from second_order.suite.report.overlaps import overlaps, timed
from second_order.suite.tracking import runs


def segment(start: str, end: str | None, host: str = "box", slurm_job: str | None = None) -> dict:
    """A summary segment from 10:<start> to 10:<end> (minutes:seconds; end None: never recorded)."""
    day = "2026-12-07T10:"
    return {"start_step": 0, "end_step": 10, "host": host, "slurm_job": slurm_job,
            "started_at": f"{day}{start}+0000", "ended_at": end and f"{day}{end}+0000"}  # fmt: skip


def final_run_with(where: Path, seed: int, *segments: dict) -> None:
    """A completed final run (test_study's) whose summary has these segments."""
    _final_run(where, seed, "completed")
    summary = runs.read_summary(where) or {}
    runs.write_json(where / runs.SUMMARY_FILE, {**summary, "segments": list(segments)})


def run_with(tmp_path: Path, name: str, *segments: dict) -> runs.Run:
    final_run_with(tmp_path / name, 0, *segments)
    return runs.load_run(tmp_path / name)


def test_overlap_needs_the_same_machine_and_allocation_at_the_same_time(tmp_path):
    a = run_with(tmp_path, "a", segment("00:00", "01:00"))
    b = run_with(tmp_path, "b", segment("00:30", "02:00"))  # 30 s inside a on box
    (found,) = overlaps([a, b])
    assert (found.first.path, found.second.path, found.host) == (a.path, b.path, "box")
    assert (found.end - found.start).total_seconds() == 30
    assert found.describe() == f"{a.path} and {b.path} ran at once on box for 30 s (from 2026-12-07T10:00:30+00:00)"
    after = run_with(tmp_path, "after", segment("02:00", "03:00"))  # starts in the second b ended: one after another
    other_host = run_with(tmp_path, "elsewhere", segment("00:10", "00:50", host="node7"))
    own_jobs = [run_with(tmp_path, f"job{i}", segment("00:10", "00:50", slurm_job=str(i))) for i in (1, 2)]
    assert overlaps([b, after, other_host, *own_jobs]) == []  # SLURM jobs on one node: separate allocations
    same_job = run_with(tmp_path, "same_job", segment("00:20", "00:40", slurm_job="1"))
    assert [(o.first.path.name, o.second.path.name) for o in overlaps([*own_jobs, same_job])] == [("job1", "same_job")]


def test_runs_without_both_times_are_not_checked(tmp_path):
    old = run_with(tmp_path, "old", {"start_step": 0, "end_step": 10, "host": "box"})  # before the times were kept
    killed = run_with(tmp_path, "killed", segment("00:00", None), segment("05:00", "06:00"))
    whole = run_with(tmp_path, "whole", segment("00:10", "00:20"))
    assert overlaps([old, killed, whole]) == []  # killed's first segment has no end: unknown, not an overlap
    assert [timed(r) for r in (old, killed, whole)] == [False, False, True]


@pytest.mark.parametrize("launcher", ["parallel", "joblib", "local_processes", "submitit_local", "mine"])
def test_the_final_phase_refuses_launchers_that_run_jobs_at_once(tmp_path, launcher, monkeypatch):
    from second_order.suite import launchers
    from second_order.suite.study import runner
    from second_order.suite.study.plan import StudyError, load_study

    configs = tmp_path / "launchers"  # a user's own preset extending the repository's local one
    configs.mkdir()
    (configs / "mine.yaml").write_text("defaults:\n  - local_processes\n  - _self_\ntimeout_min: 60\n")
    for name in ("parallel", "local_processes", "slurm_gpu"):
        (configs / f"{name}.yaml").write_text((launchers.LAUNCHER_CONFIGS / f"{name}.yaml").read_text())
    monkeypatch.setattr(launchers, "LAUNCHER_CONFIGS", configs)
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    launched: list[list[str]] = []
    extra = [f"hydra/launcher={launcher}"]
    with pytest.raises(StudyError, match=rf"hydra/launcher={launcher} runs a sweep's jobs at once on this machine.*"
                                         rf"`--phase tune hydra/launcher={launcher}`"):  # fmt: skip
        runner.run_study(study, tmp_path / "root", phases=("tune", "final"), run=launched.append, extra=extra)
    assert launched == []  # refused before any tuning

    def tune_only(args):  # tuning in parallel is fine
        launched.append(list(args))
        raise subprocess.CalledProcessError(1, ["train.py"])

    runner.run_study(study, tmp_path / "root", phases=("tune",), run=tune_only, extra=extra)
    assert launched and all(extra[0] in a for a in launched)


@pytest.mark.parametrize("launcher", ["slurm_gpu", "submitit_slurm", "basic"])
def test_the_final_phase_takes_slurm_or_the_basic_launcher(launcher):
    from second_order.suite.launchers import runs_jobs_at_once
    from second_order.suite.study.runner import check_final_launcher

    check_final_launcher(["model.hidden=20", f"hydra/launcher={launcher}"])
    assert not runs_jobs_at_once(launcher)


def test_the_study_report_names_final_runs_that_ran_at_once(tmp_path):
    from second_order.suite.study.plan import load_study
    from second_order.suite.study.report import write_report
    from second_order.suite.study.runner import final_dir

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    study = load_study(config)
    where = final_dir(tmp_path, study.workloads[0]) / "sgd"
    for seed, (start, end) in enumerate([("00:00", "01:00"), ("00:20", "01:30")]):
        final_run_with(where / f"seed{seed}", seed, segment(start, end))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        write_report(study, tmp_path, tmp_path / "out")
    assert any(re.search("ran at once on box for 40 s.*not comparable", str(w.message)) for w in caught)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "meant to run one at a time, but 1 pair(s) shared a machine at once" in summary
    assert "## Timed runs that ran at once on one machine" in summary
    assert "- final/mnist_mlp/sgd/seed0 and final/mnist_mlp/sgd/seed1 ran at once on box for 40 s" in summary


@pytest.mark.slow
def test_jobs_of_a_parallel_launcher_are_found_to_overlap(real_mnist_dir, tmp_path):
    """Two real jobs through joblib at once: each run's record shows it, and make_figures says so."""
    from test_pipeline import train_cli

    proc = train_cli(
        "-m",
        "hydra/launcher=parallel",
        "optimizer=hessian_free",
        "seed=0,1",
        "trainer.max_time_s=4",  # long enough that the two jobs' start-up cannot separate them
        "logger.wandb.mode=disabled",
        f"data.dir={real_mnist_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = load_runs([tmp_path / "sweep"])
    assert len(found) == 2 and all(timed(r) for r in found)
    for run in found:
        (seg,) = json.loads((run.path / runs.SUMMARY_FILE).read_text())["segments"]
        assert seg["started_at"] <= seg["ended_at"] and seg["slurm_job"] is None
    (pair,) = overlaps(found)
    assert (pair.end - pair.start).total_seconds() >= 1
    from conftest import REPO

    command = [sys.executable, str(REPO / "scripts" / "make_figures.py"), str(tmp_path / "sweep")]
    figures = subprocess.run([*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert figures.returncode == 0, figures.stderr[-2000:]
    assert "ran at once on" in figures.stderr and "are not comparable" in figures.stderr
