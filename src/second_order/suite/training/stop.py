"""When a run stops: budgets, signals, divergence."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Mapping
from typing import Any

import numpy as np

from second_order.suite.config import ConfigError, TrainerConfig

#: Names the signal submitit sends a job before stopping it ("USR2" when unset), as submitit reads it.
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def preemption_signal() -> int:
    """The signal a cluster job gets before it is stopped: USR2, or ``$SUBMITIT_PREEMPT_SIGNAL``."""
    name = os.environ.get(PREEMPT_SIGNAL_ENV, "USR2")
    sig = getattr(signal, "SIG" + name, None)
    if not isinstance(sig, signal.Signals):
        raise ConfigError(f"{PREEMPT_SIGNAL_ENV} = {name!r} is invalid: must name a signal such as USR2 (or be unset)")
    return int(sig)


def resumes_by_itself(summary: Mapping[str, Any] | None) -> bool:
    """Whether a run continues without ``trainer.resume=true``: the pre-emption signal stopped it,
    or SLURM requeued its job (``SLURM_RESTART_COUNT`` > 0) after it was interrupted or killed.
    """
    status = (summary or {}).get("status")
    if status == "interrupted" and (summary or {}).get("signal") == preemption_signal():
        return True
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return status in ("interrupted", "running") and restarts.isdigit() and int(restarts) > 0


def budget_spent(previous: Mapping[str, Any], trainer: TrainerConfig, start: int, per_epoch: int) -> bool:
    """Whether a run that ended on its budget (``previous``, its summary; checkpointed at step
    ``start``) has no step left under ``trainer``'s budgets: then a resume (``make reproduce``
    again) leaves it untouched instead of recording an empty segment."""
    if previous.get("status") != "budget":
        return False
    last = trainer.epochs * per_epoch
    if trainer.max_steps is not None:
        last = min(last, trainer.max_steps)
    spent = trainer.max_time_s is not None and float(previous.get("train_time_s") or 0.0) >= trainer.max_time_s
    return start >= last or spent


class StopSignals:
    """Turns SIGINT, SIGTERM and the pre-emption signal into a flag checked between chunks.

    The handlers found are restored on exit (submitit's, in a cluster job: see ``cli.train_job``).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in dict.fromkeys((signal.SIGINT, signal.SIGTERM, preemption_signal())):
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
