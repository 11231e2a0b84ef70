"""Time to target: when a run's validation metric first reaches the workload's target.

A run is evaluated on its validation split every ``trainer.eval_every_steps`` steps
(``eval.csv``: ``step``, ``time_s``, ``val_loss``, ``val_acc``).  For a target ``τ``
on a metric to maximise (accuracy) the run reaches it at the first evaluation with
``metric ≥ τ`` (``≤ τ`` for one to minimise, a loss), and

* ``steps``: that evaluation's step;
* ``seconds``: its optimizer time ``time_s`` (our time axis: compilation, evaluation
  and logging excluded);
* ``seconds_with_compile``: ``time_s`` plus the run's whole compilation time, as
  AlgoPerf counts the submission's wall clock (our runs compile every chunk shape
  at the start, and one more shape at the end of the first epoch, so counting all of
  it is exact up to that last shape, an upper bound otherwise).

A run that never reaches the target, or diverges first, gets ``inf`` for all three
(as AlgoPerf scores a missed target).  Targets are set as AlgoPerf sets them: from
the best result of the tuned baselines on the validation split
(:func:`target_from_baselines`), and written in the study's config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

MAXIMISE = {"val_acc": True, "val_loss": False}


@dataclasses.dataclass(frozen=True)
class TimeToTarget:
    """Steps and optimizer seconds until the target; ``inf`` when it was never reached."""

    steps: float
    seconds: float
    seconds_with_compile: float

    @property
    def reached(self) -> bool:
        return math.isfinite(self.steps)


MISSED = TimeToTarget(math.inf, math.inf, math.inf)


def reached(values: np.ndarray, target: float, metric: str) -> np.ndarray:
    """Which evaluations meet the target (NaN never does)."""
    if metric not in MAXIMISE:
        raise ValueError(f"metric {metric!r}: choose one of {', '.join(MAXIMISE)}")
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return values >= target if MAXIMISE[metric] else values <= target


def time_to_target(
    evals: Mapping[str, np.ndarray], summary: Mapping[str, object], target: float, metric: str = "val_acc"
) -> TimeToTarget:
    """The first evaluation in ``evals`` (eval.csv columns) that meets ``target``; MISSED if none."""
    if metric not in evals or not len(evals[metric]):
        return MISSED
    hit = np.flatnonzero(reached(evals[metric], target, metric))
    if not hit.size:
        return MISSED
    i = int(hit[0])
    diverged = summary.get("diverged_step")
    if isinstance(diverged, (int, float)) and evals["step"][i] > diverged:
        return MISSED
    compile_s = float(summary.get("compile_time_s") or 0.0)  # type: ignore[arg-type]
    seconds = float(evals["time_s"][i])
    return TimeToTarget(float(evals["step"][i]), seconds, seconds + compile_s)


def target_from_baselines(final_values: Sequence[float], metric: str = "val_acc") -> float:
    """The best of the tuned baselines' final validation results (median over their seeds, given here)."""
    finite = [v for v in final_values if math.isfinite(v)]
    if not finite:
        raise ValueError("no finite baseline result to set a target from")
    return max(finite) if MAXIMISE[metric] else min(finite)


def median_and_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) over seeds; a missed seed (inf) counts as the largest time."""
    arr = np.sort(np.asarray(values, dtype=float))
    if not arr.size:
        return math.nan, math.nan, math.nan
    return float(np.median(arr)), float(arr[0]), float(arr[-1])
