"""Wall-clock accounting that keeps compilation, evaluation and logging off the time axis.

In the spirit of big_vision's ``Chrono`` and AlgoPerf's accumulated submission time:
the optimizer clock only runs inside ``measure('train')`` blocks, which the trainer
closes after ``block_until_ready`` on the step outputs, so asynchronous dispatch
cannot hide device time.  Everything else is accounted in its own bucket.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class Clock:
    """Named stopwatches: ``totals['train']`` is the optimizer time axis."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = defaultdict(float, totals or {})

    @contextlib.contextmanager
    def measure(self, bucket: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[bucket] += time.perf_counter() - start

    def __getitem__(self, bucket: str) -> float:
        return self.totals[bucket]

    def state(self) -> dict[str, float]:
        return dict(self.totals)
