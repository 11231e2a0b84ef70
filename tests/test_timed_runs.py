"""Timed runs stay comparable: runs that shared a machine at once, or ran on other devices, are refused
up front where that can be known, and found from the run files and reported where it cannot."""

from __future__ import annotations

import json
import re
import shutil
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


@pytest.fixture
def configs(tmp_path, monkeypatch) -> Path:
    """A copy of the repository's configs that the launcher check reads (to add a user's files to)."""
    from conftest import REPO

    from second_order.suite import launchers

    copy = tmp_path / "configs"
    shutil.copytree(REPO / "configs", copy, ignore=shutil.ignore_patterns("default.yaml"))
    monkeypatch.setattr(launchers, "CONFIGS", copy)
    return copy


def smoke_study(tmp_path: Path):
    from second_order.suite.study.plan import load_study

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE)
    return load_study(config)


@pytest.mark.parametrize("launcher", ["parallel", "joblib", "local_processes", "submitit_local", "mine"])
def test_the_final_phase_refuses_launchers_that_run_jobs_at_once(tmp_path, configs, launcher):
    from second_order.suite.study.plan import StudyError
    from second_order.suite.study.runner import run_study

    # a user's own preset, judged by the plugin it extends
    (configs / "hydra" / "launcher" / "mine.yaml").write_text("defaults:\n  - local_processes\n  - _self_\n")
    study, launched = smoke_study(tmp_path), []
    extra = [f"hydra/launcher={launcher}"]
    with pytest.raises(StudyError, match=rf"hydra/launcher={launcher} \(.*\) runs a sweep's jobs at once on this "
                                         r"machine: the timed final runs would share its cores"):  # fmt: skip
        run_study(study, tmp_path / "root", phases=("tune", "final"), run=launched.append, extra=extra)
    assert launched == []  # refused before any tuning

    def tune_only(args):  # tuning in parallel is fine
        launched.append(list(args))
        raise subprocess.CalledProcessError(1, ["train.py"])

    run_study(study, tmp_path / "root", phases=("tune",), run=tune_only, extra=extra)
    assert launched and all(extra[0] in a for a in launched)


def test_the_machine_local_config_picks_the_studys_launcher(tmp_path, configs, monkeypatch):
    """configs/local/default.yaml's launcher (SLURM on a cluster) is used, not overridden by basic;
    one that runs jobs at once is refused for the final runs, naming that file."""
    from second_order.suite.local_config import NO_LOCAL_CONFIG_ENV
    from second_order.suite.study.plan import StudyError
    from second_order.suite.study.runner import check_final_launcher, run_study

    monkeypatch.delenv(NO_LOCAL_CONFIG_ENV)  # conftest keeps the other tests off the local config

    local = configs / "local" / "default.yaml"
    local.write_text((configs / "local" / "example.yaml").read_text())  # SLURM, with an account key
    study, launched = smoke_study(tmp_path), []

    def record(args):
        launched.append(list(args))
        raise subprocess.CalledProcessError(1, ["train.py"])

    run_study(study, tmp_path / "root", phases=("tune", "final"), run=record)
    assert launched and not any(a.startswith("hydra/launcher=") for args in launched for a in args)
    with pytest.raises(StudyError, match=r"final runs: the launcher does not compose: .*account.*`~local`"):
        check_final_launcher(["hydra/launcher=basic"])  # the example's SLURM keys on the basic launcher
    local.write_text("# @package _global_\ndefaults:\n  - override /hydra/launcher: local_processes\n")
    with pytest.raises(StudyError, match=r"the launcher configs/local/default.yaml picks \(submitit's local"):
        check_final_launcher([])
    check_final_launcher(["hydra/launcher=basic"])  # the command line wins
    monkeypatch.setenv(NO_LOCAL_CONFIG_ENV, "1")
    check_final_launcher([])  # without the local config: Hydra's basic launcher


@pytest.mark.parametrize("launcher", ["slurm_gpu", "submitit_slurm", "basic"])
def test_the_final_phase_takes_slurm_or_the_basic_launcher(launcher):
    from second_order.suite.launchers import jobs_at_once
    from second_order.suite.study.runner import check_final_launcher

    check_final_launcher(["model.hidden=20", f"hydra/launcher={launcher}"])
    assert jobs_at_once([f"hydra/launcher={launcher}", "~local"]) is None


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
    assert "libtpu" not in proc.stdout + proc.stderr  # JAX's no-TPU notice is dropped in the workers too
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


def test_the_summary_says_how_the_final_runs_ran_only_as_far_as_their_records_show(tmp_path):
    from second_order.suite.study.report import serial_note

    one, two = (run_with(tmp_path, f"r{i}", segment(f"0{i}:00", f"0{i}:30")) for i in (1, 2))
    assert serial_note({"w": {"sgd": [one, two]}}, []) == (
        "one at a time (checked from their records: no two shared a machine at once)"
    )
    old = run_with(tmp_path, "old", {"start_step": 0, "end_step": 10, "host": "box"})
    assert serial_note({"w": {"sgd": [one, old]}}, []) == "one at a time"  # not checked: not claimed
    jobs = [run_with(tmp_path, f"j{i}", segment("00:00", "00:30", slurm_job=str(i))) for i in (1, 2)]
    assert serial_note({"w": {"sgd": jobs}}, []).startswith("as SLURM jobs (checked")


def test_the_study_summary_says_where_the_final_runs_were_timed(tmp_path):
    from second_order.suite.study.report import _device_phrase, _device_section, timed_on

    def on(name: str, *kinds: str) -> runs.Run:
        segs = [{**segment("00:00", "00:10"), "device_kind": k, "backend": "gpu", "num_devices": 1} for k in kinds]
        return run_with(tmp_path, name, *segs)

    h100 = [on(f"h{i}", "NVIDIA H100") for i in range(2)]
    assert timed_on({"w": {"sgd": h100}}) == {"NVIDIA H100 (gpu)": ["sgd on w seed 0", "sgd on w seed 0"]}
    assert _device_phrase(timed_on({"w": {"sgd": h100}})) == ", timed on NVIDIA H100 (gpu)"
    assert _device_section(timed_on({"w": {"sgd": h100}})) == ""
    mixed = {"w": {"sgd": h100, "adam": [on("v", "Tesla V100")], "kfac": [on("both", "NVIDIA H100", "Tesla V100")]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        found = timed_on(mixed)
    assert sorted(found) == ["NVIDIA H100 (gpu)", "NVIDIA H100 (gpu) + Tesla V100 (gpu)", "Tesla V100 (gpu)"]
    assert any("timed on 3 devices" in str(w.message) for w in caught)
    assert _device_phrase(found).startswith(", timed on 3 different devices (named at the end")
    assert "- Tesla V100 (gpu): adam on w seed 0" in _device_section(found)


def test_cpu_runs_are_told_apart_by_their_cpu_model_and_cores(tmp_path):
    """On a CPU the device kind is just "cpu": the study names the CPU model and cores the runs
    recorded (environment.json), so runs on two kinds of CPU node count as two devices."""
    from second_order.suite.study.report import _device_phrase, timed_on

    def on(name: str, model: str, cores: int) -> runs.Run:
        run = run_with(tmp_path, name, {**segment("00:00", "00:10"), "device_kind": "cpu", "backend": "cpu"})
        segment_record = {"start_step": 0, "device_kind": "cpu", "cpu_model": model, "cpu_cores": cores}
        runs.write_json(run.path / runs.ENV_FILE, {**segment_record, "segments": [segment_record]})
        return run

    same = {"w": {"sgd": [on("a", "AMD EPYC", 2)], "adam": [on("b", "AMD EPYC", 2)]}}
    assert _device_phrase(timed_on(same)) == ", timed on cpu (AMD EPYC, 2 cores)"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", ReportWarning)
        mixed = timed_on({"w": {"sgd": [on("c", "AMD EPYC", 2)], "adam": [on("d", "Intel Xeon", 32)]}})
    assert sorted(mixed) == ["cpu (AMD EPYC, 2 cores)", "cpu (Intel Xeon, 32 cores)"]
    old = run_with(tmp_path, "old", {**segment("00:00", "00:10"), "device_kind": "cpu", "backend": "cpu"})
    assert list(timed_on({"w": {"sgd": [old]}})) == ["cpu"]  # recorded before the CPU was: as before
