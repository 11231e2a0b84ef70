"""When a run stops: budgets, signals, divergence."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

import numpy as np


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked between chunks (handlers restored on exit)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass(frozen=True)
class StopPolicy:
    """The step budget (``last_step``) and the optional optimizer-time budget."""

    last_step: int
    max_time_s: float | None

    def out_of_time(self, train_time_s: float) -> bool:
        return self.max_time_s is not None and train_time_s >= self.max_time_s


def finite_prefix(losses: np.ndarray, params_ok: bool) -> int:
    """Steps of a chunk to keep: all when finite, else up to and including the first bad one.

    ``params_ok`` covers the last step (bad parameters after a finite last loss).
    """
    ok = np.isfinite(losses)
    ok[-1] &= bool(params_ok)
    return len(ok) if ok.all() else int(np.argmin(ok)) + 1
