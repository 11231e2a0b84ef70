"""Hydra callback that writes a sweep's status table when a multirun ends.

The table lists the jobs of *this* multirun only, not every run below the sweep
directory (which by default, ``runs/<experiment>``, also holds single runs and older
sweeps). When the multirun starts, the callback puts a token in the environment
(``SWEEP_TOKEN_ENV``, inherited by the launcher's job processes: joblib, submitit local,
SLURM with its default ``--export=ALL``); each job, as it starts, notes its run directory
in ``<sweep dir>/.sweep_jobs/<token>/<job number>.json``. Where no job noted one (a job
environment without the token), the table falls back to every run below the directory.

A multirun that ran to its end with failed jobs (status ``failed``, or no readable record)
makes ``scripts/train.py`` exit with :data:`JOBS_FAILED` (see :func:`last_multirun`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from hydra.types import RunMode

from second_order.suite.tracking import runs

log = logging.getLogger(__name__)
SWEEP_SUMMARY = "sweep_summary.json"
#: The environment variable that names the running multirun's journal.
SWEEP_TOKEN_ENV = "SECOND_ORDER_SWEEP_TOKEN"
#: The folder of the sweep directory where each multirun's jobs note their run directories.
JOURNAL_DIR = ".sweep_jobs"
FIELDS = ("optimizer", "seed", "status", "steps", "train_loss", "test_acc", "error")
#: Exit status of ``scripts/train.py -m`` when the sweep ran to its end but jobs failed (table in SWEEP_SUMMARY).
JOBS_FAILED = 3
#: A job's status in the table that is a failure (diverged, a budget or an interruption are not).
FAILED_STATUSES = ("failed", "missing", "unreadable")


class MultirunEnd(NamedTuple):
    """What a multirun of this process ended with: its sweep directory and table rows."""

    sweep_dir: Path
    rows: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] in FAILED_STATUSES]


_ended: MultirunEnd | None = None


def last_multirun() -> MultirunEnd | None:
    """The last multirun this process ended (set by :meth:`SweepSummary.on_multirun_end`), or None."""
    return _ended


def run_multirun(cmd: Sequence[str], cwd: Path) -> None:
    """Run a ``scripts/train.py -m`` command as a child process, for callers that read every job's record
    afterwards (scripts/reproduce.py, the study): a sweep that ran with failed jobs (:data:`JOBS_FAILED`)
    returns; any other non-zero exit status raises ``subprocess.CalledProcessError``."""
    code = subprocess.run(list(cmd), cwd=cwd).returncode
    if code not in (0, JOBS_FAILED):
        raise subprocess.CalledProcessError(code, list(cmd))


def _row(sweep_dir: Path, run_dir: Path) -> dict[str, Any]:
    summary_path = run_dir / runs.SUMMARY_FILE
    try:
        s = json.loads(summary_path.read_text())
    except FileNotFoundError:
        s = {"status": "missing", "error": f"no {runs.SUMMARY_FILE}: the job ended before its run started"}
    except (OSError, ValueError) as err:
        s = {"status": "unreadable", "error": f"{summary_path}: {err}"}
    try:
        shown = str(run_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        shown = str(run_dir)
    return {"run_dir": shown, **{k: s.get(k) for k in FIELDS}}


def _journal(sweep_dir: Path, token: str | None) -> Path | None:
    return Path(sweep_dir) / JOURNAL_DIR / token if token else None


def journaled_run_dirs(sweep_dir: Path, token: str | None) -> list[Path] | None:
    """The run directories this multirun's jobs noted, by job number; None when none did."""
    journal = _journal(sweep_dir, token)
    if journal is None or not journal.is_dir():
        return None
    noted = []
    for entry in journal.glob("*.json"):
        try:
            noted.append((int(entry.stem), Path(json.loads(entry.read_text())["run_dir"])))
        except (OSError, ValueError, KeyError):
            continue  # a note being written as the signal landed
    return [run_dir for _, run_dir in sorted(noted)] or None


def sweep_status(sweep_dir: Path, token: str | None = None) -> list[dict[str, Any]]:
    """One entry per job of the multirun ``token`` (else per run directory below ``sweep_dir``).

    Each entry: run directory (relative to ``sweep_dir``), optimizer, seed, status and results.
    """
    sweep_dir = Path(sweep_dir)
    run_dirs = journaled_run_dirs(sweep_dir, token)
    if run_dirs is None:
        run_dirs = [p.parent for p in sorted(sweep_dir.rglob(runs.SUMMARY_FILE))]
    return [_row(sweep_dir, run_dir) for run_dir in run_dirs]


def write_sweep_summary(
    sweep_dir: Path, interrupted_by: int | None = None, token: str | None = None
) -> list[dict[str, Any]]:
    """Write ``<sweep dir>/sweep_summary.json`` of the multirun ``token`` (default: the running one).

    Also when a signal stops the sweep (``interrupted_by``).
    """
    rows = sweep_status(sweep_dir, token or os.environ.get(SWEEP_TOKEN_ENV))
    record: dict[str, Any] = {"jobs": rows}
    if interrupted_by is not None:
        record["interrupted_by_signal"] = interrupted_by
    runs.write_json(Path(sweep_dir) / SWEEP_SUMMARY, record)
    return rows


class SweepSummary(Callback):
    """Journals each job's run directory; ``on_multirun_end`` writes ``sweep_summary.json`` and logs each job."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        os.environ[SWEEP_TOKEN_ENV] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        journal = _journal(Path(config.hydra.sweep.dir), os.environ.get(SWEEP_TOKEN_ENV))
        if journal is None or config.hydra.mode != RunMode.MULTIRUN:
            return
        journal.mkdir(parents=True, exist_ok=True)
        runs.write_json(journal / f"{config.hydra.job.num}.json", {"run_dir": config.hydra.runtime.output_dir})

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global _ended
        sweep_dir = Path(config.hydra.sweep.dir)
        token = os.environ.pop(SWEEP_TOKEN_ENV, None)
        if not sweep_dir.exists():
            return
        rows = write_sweep_summary(sweep_dir, token=token)
        _ended = MultirunEnd(sweep_dir, rows)
        journal = _journal(sweep_dir, token)
        if journal is not None:
            shutil.rmtree(journal, ignore_errors=True)
            try:
                journal.parent.rmdir()  # only when no other multirun is journaling here
            except OSError:
                pass
        for r in rows:
            log.info("%-40s %-10s %s", r["run_dir"], r["status"], r.get("error") or "")
        failed = [r for r in rows if r["status"] not in ("completed", "budget")]
        log.info("sweep: %d jobs, %d not completed; table in %s", len(rows), len(failed), sweep_dir / SWEEP_SUMMARY)
