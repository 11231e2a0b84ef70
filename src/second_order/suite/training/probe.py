"""In-loop measurements (curvature spectra) on their own clock, at fixed steps of each epoch.

A :class:`TimedProbe` runs a jitted measurement ``(params, X, Y, batch_idx, key) →
{column: scalar}`` at the steps :meth:`TimedProbe.due` names: every ``every_steps``
steps of each epoch, counted from the epoch's first step (:mod:`.schedule`), so the
points fall on chunk boundaries and a resumed run measures at the same steps.  Compilation is
timed as ``compile``, the measurement as ``curvature``; neither touches ``train``.
"""

from __future__ import annotations

from typing import Any

import jax

from second_order.suite.training import schedule
from second_order.suite.training.clock import Clock

PROBE_STREAM = 0x5BEC  # folded into the run's key: the probes' randomness never touches training's


class TimedProbe:
    """A compiled measurement, its schedule and its clock."""

    def __init__(self, fn: Any, every_steps: int, clock: Clock, bucket: str = "curvature"):
        if every_steps < 1:
            raise ValueError(f"every_steps = {every_steps} must be >= 1")
        self.fn, self.every_steps, self.clock, self.bucket = fn, every_steps, clock, bucket
        self.compiled: Any = None

    def due(self, step: int, steps_per_epoch: int) -> bool:
        return schedule.due(step, steps_per_epoch, self.every_steps)

    def next_due(self, step: int, steps_per_epoch: int) -> int:
        """The first step after ``step`` at which a measurement is due."""
        return schedule.next_due(step, steps_per_epoch, self.every_steps)

    def __call__(
        self, params: Any, x: jax.Array, y: jax.Array, batch_idx: jax.Array, key: jax.Array
    ) -> tuple[dict[str, float], float]:
        """The measurement as Python floats, and the seconds it took (compilation excluded)."""
        if self.compiled is None:
            with self.clock.measure("compile"):
                self.compiled = self.fn.lower(params, x, y, batch_idx, key).compile()
        before = self.clock[self.bucket]
        with self.clock.measure(self.bucket):
            values = jax.device_get(self.compiled(params, x, y, batch_idx, key))
        return {name: float(v) for name, v in values.items()}, self.clock[self.bucket] - before
