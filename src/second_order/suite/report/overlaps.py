"""Timed runs that shared a machine at once: their optimizer seconds are not comparable.

Two runs overlap when a segment of each (``summary.json`` ``segments``) ran on the same
``host`` in the same allocation (the same ``slurm_job``; ``None`` for both: one machine
without a scheduler) and their ``[started_at, ended_at]`` intervals intersect. Jobs of a
parallel launcher on one machine (joblib, submitit's local executor) or two commands run
at once there overlap; SLURM jobs on one node are separate allocations (their own cores
and GPUs) and do not. The times are whole seconds, so runs one after another (the next
starts in the second the last ended) never count; segments without both times (older
runs, a segment killed before it could record its end) are not checked.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from second_order.suite.report.runinfo import segments
from second_order.suite.tracking.runs import Run


@dataclasses.dataclass(frozen=True)
class Overlap:
    """Two runs that ran on ``host`` at once, from ``start`` to ``end``."""

    first: Run
    second: Run
    host: str
    start: datetime
    end: datetime

    def describe(self, shown: Callable[[Path], str] = str) -> str:
        """One line: the two run directories (``shown`` formats a path), the host and the shared time."""
        a, b = sorted((shown(self.first.path), shown(self.second.path)))
        seconds = (self.end - self.start).total_seconds()
        return f"{a} and {b} ran at once on {self.host} for {seconds:.0f} s (from {self.start.isoformat()})"


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _intervals(run: Run) -> Iterator[tuple[tuple[str, Any], datetime, datetime]]:
    """((host, slurm_job), start, end) of each segment with both times."""
    for s in segments(run):
        start, end = _time(s.get("started_at")), _time(s.get("ended_at"))
        if start is not None and end is not None and s.get("host"):
            yield (str(s["host"]), s.get("slurm_job")), start, end


def timed(run: Run) -> bool:
    """Whether every segment of ``run`` has both times (so the check covers all of it)."""
    found = segments(run)
    return bool(found) and len(list(_intervals(run))) == len(found)


def overlaps(runs: Sequence[Run]) -> list[Overlap]:
    """Every pair of ``runs`` that overlapped (at most one entry per pair: the first shared interval)."""
    spans = [(run, list(_intervals(run))) for run in runs]
    found: list[Overlap] = []
    for (a, spans_a), (b, spans_b) in itertools.combinations(spans, 2):
        if Path(a.path) == Path(b.path):
            continue
        shared = [
            (where, max(s1, s2), min(e1, e2))
            for where, s1, e1 in spans_a
            for other, s2, e2 in spans_b
            if where == other and max(s1, s2) < min(e1, e2)
        ]
        if shared:
            (host, _), start, end = min(shared, key=lambda x: x[1])
            found.append(Overlap(a, b, host, start, end))
    return found
