"""Hydra callback that writes a sweep's status table when a multirun ends."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from second_order.suite.tracking import runs

log = logging.getLogger(__name__)
SWEEP_SUMMARY = "sweep_summary.json"


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per run directory below ``sweep_dir``: path, optimizer, seed, status and results."""
    rows = []
    for summary_path in sorted(Path(sweep_dir).rglob(runs.SUMMARY_FILE)):
        try:
            s = json.loads(summary_path.read_text())
        except (OSError, ValueError) as err:
            s = {"status": "unreadable", "error": f"{summary_path}: {err}"}
        rows.append({
            "run_dir": str(summary_path.parent.relative_to(sweep_dir)),
            **{k: s.get(k) for k in ("optimizer", "seed", "status", "steps", "train_loss", "test_acc", "error")},
        })  # fmt: skip
    return rows


def write_sweep_summary(sweep_dir: Path, interrupted_by: int | None = None) -> list[dict[str, Any]]:
    """Write ``<sweep dir>/sweep_summary.json`` (also when a signal stops the sweep)."""
    rows = sweep_status(sweep_dir)
    record: dict[str, Any] = {"jobs": rows}
    if interrupted_by is not None:
        record["interrupted_by_signal"] = interrupted_by
    runs.write_json(Path(sweep_dir) / SWEEP_SUMMARY, record)
    return rows


class SweepSummary(Callback):
    """``on_multirun_end``: writes ``<sweep dir>/sweep_summary.json`` and logs one line per job."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_sweep_summary(sweep_dir)
        for r in rows:
            log.info("%-40s %-10s %s", r["run_dir"], r["status"], r.get("error") or "")
        failed = [r for r in rows if r["status"] not in ("completed", "budget")]
        log.info("sweep: %d jobs, %d not completed; table in %s", len(rows), len(failed), sweep_dir / SWEEP_SUMMARY)
