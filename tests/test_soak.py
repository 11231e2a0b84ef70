"""Bounded soak: SIGKILL a checkpointed run and a small sweep at random instants, resume, compare.

A SIGKILL cannot be caught: the run gets no chance to write "interrupted", flush its
logs or checkpoint.  Whatever instant it lands at (compiling, mid-chunk, writing a CSV
row, committing a checkpoint, evaluating, between two sweep jobs), resuming with the
same overrides must give records equal to an uninterrupted run's: the same losses as
written, each step once, the same evaluations and the same final summary.

Kill instants are deterministic (``random.Random(0)``) fractions of the training window
that the uninterrupted reference run took on this machine (from its first steps.csv rows
to its exit), so the kills land inside training on fast and slow machines alike.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from second_order.suite.sweep import SWEEP_SUMMARY
from second_order.suite.tracking import runs
from second_order.suite.training import checkpoint

#: Kills and resumes of runs as users compile them (the rest of the suite compiles at XLA's level 0).
pytestmark = [pytest.mark.slow, pytest.mark.xla_default]

FINISHED = ("budget", "completed")
TIMEOUT_S = 120  # one process, start to exit: far above what any takes


def losses_as_written(run_dir: Path) -> list[str]:
    lines = (run_dir / runs.STEPS_FILE).read_text().splitlines()[1:]
    return [line.split(",")[2] for line in lines]


def steps_as_written(run_dir: Path) -> list[int]:
    lines = (run_dir / runs.STEPS_FILE).read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


def evals_as_written(run_dir: Path) -> list[list[str]]:
    """eval.csv rows without the time column (epoch, step, test_loss, test_acc)."""
    lines = (run_dir / runs.EVAL_FILE).read_text().splitlines()[1:]
    return [[f for i, f in enumerate(line.split(",")) if i != 2] for line in lines]


def start(args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115  (closed by finish)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = out  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen) -> int:
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.log.close()  # type: ignore[attr-defined]
    return rc


def _rows(path: Path) -> int:
    try:
        return max(path.read_text().count("\n") - 1, 0)
    except OSError:
        return 0


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


Snapshot = dict[Path, tuple[int | None, int, int]]


def snapshot(run_dirs: list[Path]) -> Snapshot:
    """Per run dir: the inode of steps.csv, its rows and the step its newest checkpoint holds.

    A (re)started run rewrites steps.csv (truncating it to its checkpoint: a new inode),
    then appends; rows beyond the checkpoint in a file with a new inode (or more rows
    than before, were it ever truncated in place) are this process's own training rows.
    """
    return {d: (_inode(d / runs.STEPS_FILE), _rows(d / runs.STEPS_FILE), checkpoint.latest_step(d)) for d in run_dirs}


def wait_for_new_rows(proc: subprocess.Popen, before: Snapshot) -> float | None:
    """Poll until some run dir has training rows written by ``proc``; their time, or None if it exited."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for d, (inode, rows, ckpt_step) in before.items():
            f = d / runs.STEPS_FILE
            now, n = _inode(f), _rows(f)
            if now is not None and n > ckpt_step and (now != inode or n > rows):
                return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    pytest.fail(f"no training rows in {list(before)} after {TIMEOUT_S} s")


def run_uninterrupted(args: list[str], watch: list[Path], log: Path) -> float:
    """Run to the end; return its training window (first steps.csv rows to exit) in seconds."""
    proc = start(args, log)
    t_rows = wait_for_new_rows(proc, snapshot(watch))
    rc = finish(proc)
    t_end = time.monotonic()
    assert rc == 0, log.read_text()[-3000:]
    assert t_rows is not None
    return t_end - t_rows


def kill_at(args: list[str], watch: list[Path], delay_s: float, log: Path) -> bool:
    """Start, wait ``delay_s`` after its first new training rows, SIGKILL; True if the kill landed."""
    before = snapshot(watch)
    proc = start(args, log)
    t_rows = wait_for_new_rows(proc, before)
    if t_rows is not None:
        while proc.poll() is None and time.monotonic() < t_rows + delay_s:
            time.sleep(0.002)
        proc.kill()
    rc = finish(proc)
    assert rc in (0, -signal.SIGKILL), log.read_text()[-3000:]
    # Shown when the test fails: where each kill left the runs.
    left = {"/".join(d.parts[-2:]): (_rows(d / runs.STEPS_FILE), checkpoint.latest_step(d)) for d in watch}
    print(f"kill {delay_s:.3f} s after first new rows: rc {rc}; (rows, checkpoint step) {left}")
    return rc == -signal.SIGKILL


def assert_same_records(run_dir: Path, reference: Path, steps: int) -> None:
    assert steps_as_written(run_dir) == list(range(1, steps + 1)), f"{run_dir}: steps not 1..{steps} once each"
    assert losses_as_written(run_dir) == losses_as_written(reference), f"{run_dir}: train_loss differs"
    assert evals_as_written(run_dir) == evals_as_written(reference), f"{run_dir}: eval.csv differs"
    got = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    want = json.loads((reference / runs.SUMMARY_FILE).read_text())
    assert got["status"] in FINISHED and got["status"] == want["status"]
    for key in ("steps", "train_loss", "test_loss", "test_acc", "epochs_completed"):
        assert got[key] == want[key], f"{run_dir}: summary {key} {got[key]!r} != {want[key]!r}"
    assert got["steps"] == steps
    assert not list((run_dir / checkpoint.DIR).glob(".tmp-*")), "a killed save's temporary directory is left"


def test_sigkilled_run_resumes_to_the_uninterrupted_records(real_mnist_dir, tmp_path):
    # 3000 steps: three epochs of 937 steps (batch 64) and a bit, so the kills can also land
    # in an epoch's evaluation and the compilation of the short chunk that ends an epoch.
    n_steps, n_kills = 3000, 4
    common = [
        "optimizer=sgd",
        f"data.dir={real_mnist_dir}",
        f"trainer.max_steps={n_steps}",
        "trainer.chunk_steps=10",
        "trainer.checkpoint_every_s=0",  # a checkpoint after every chunk
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
        "model.hidden=[10]",
    ]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    window = run_uninterrupted([*common, f"hydra.run.dir={reference}"], [reference], tmp_path / "reference.log")
    assert len(evals_as_written(reference)) == 4  # epochs 1-3 and the end

    # The first kill lands as soon as rows appear (rows logged, the first checkpoint not yet
    # committed or being committed: the resume starts again from step 0); the others up to
    # 30% of the window after their process's first new rows, so that together they take
    # the run through about half of its steps and most land before it could finish.
    rng = random.Random(0)
    delays = [0.0] + [rng.uniform(0.0, 0.3) * window for _ in range(n_kills - 1)]
    landed = 0
    starts_with_steps_left = 0  # a start after the run ended on its budget leaves it as it is

    def steps_left() -> bool:
        summary = runs.read_summary(killed) or {}
        return not (summary.get("status") in FINISHED and summary.get("steps") == n_steps)

    for i, delay in enumerate(delays):
        args = [*common, f"hydra.run.dir={killed}"] + (["trainer.resume=true"] if i else [])
        starts_with_steps_left += steps_left()
        landed += kill_at(args, [killed], delay, tmp_path / f"killed{i}.log")
        if i == 0:
            assert (killed / runs.STEPS_FILE).exists()
    assert landed >= n_kills // 2, f"only {landed} of {n_kills} kills landed before the run ended"

    starts_with_steps_left += steps_left()
    last = start([*common, f"hydra.run.dir={killed}", "trainer.resume=true"], tmp_path / "final.log")
    assert finish(last) == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert_same_records(killed, reference, n_steps)
    # Every start that had steps left (the killed ones too) is recorded in environment.json.
    env = json.loads((killed / runs.ENV_FILE).read_text())
    assert len(env["segments"]) == starts_with_steps_left >= landed
    # The summary's segments tile the steps that were kept, killed segments included.
    segments = json.loads((killed / runs.SUMMARY_FILE).read_text())["segments"]
    assert segments[0]["start_step"] == 0 and segments[-1]["end_step"] == n_steps
    assert all(a["end_step"] == b["start_step"] for a, b in zip(segments, segments[1:]))


def test_sigkilled_sweep_resumes_to_the_uninterrupted_records(real_mnist_dir, tmp_path):
    n_steps = 150
    common = [
        "-m",
        "optimizer=sgd,hessian_free",
        "seed=0",
        f"data.dir={real_mnist_dir}",
        f"trainer.max_steps={n_steps}",
        "trainer.chunk_steps=10",
        "trainer.checkpoint_every_s=0",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
        "trainer.resume=true",
    ]
    jobs = ["sgd/seed0", "hessian_free/seed0"]
    reference, killed = tmp_path / "reference", tmp_path / "sweep"
    window = run_uninterrupted(
        [*common, f"hydra.sweep.dir={reference}"], [reference / j for j in jobs], tmp_path / "reference.log"
    )

    # The window (first sgd rows to exit) is mostly the hessian_free job's start-up and
    # compilation (about 0.05-0.7 of it; its training about 0.7-0.8).  Kill 1: as soon as
    # sgd logs rows (inside the sgd job, before or while it commits its first checkpoint).
    # Kill 2: later in the re-run, in the hessian_free job's start-up (or at the end of
    # the sgd job, or in hessian_free's training on a machine that got faster).  Kill 3: as soon as that job logs
    # rows in the next re-run, whose sgd job has finished (its resume must change nothing).
    rng = random.Random(0)
    delays = [0.0, rng.uniform(0.2, 0.6) * window, 0.0]
    landed = 0
    args = [*common, f"hydra.sweep.dir={killed}"]
    for i, delay in enumerate(delays):
        landed += kill_at(args, [killed / j for j in jobs], delay, tmp_path / f"killed{i}.log")
    assert landed >= 2, f"only {landed} of {len(delays)} kills landed before the sweep ended"

    for attempt in range(3):  # re-run the same command until it exits 0
        log = tmp_path / f"rerun{attempt}.log"
        if finish(start(args, log)) == 0:
            break
    else:
        pytest.fail(f"the sweep never exited 0 when re-run; last log:\n{log.read_text()[-3000:]}")
    assert attempt == 0, "a re-run after the kills should finish the sweep the first time"

    for j in jobs:
        assert_same_records(killed / j, reference / j, n_steps)
    table = {r["run_dir"]: r for r in json.loads((killed / SWEEP_SUMMARY).read_text())["jobs"]}
    assert set(table) == set(jobs)
    assert all(r["status"] in FINISHED and r["steps"] == n_steps for r in table.values()), table
