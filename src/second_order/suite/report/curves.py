"""Per-group curves aggregated over seeds (the numbers behind every figure).

Each seed's per-step training loss is first smoothed with a trailing moving average
of ``smooth`` steps (1 = raw; non-finite losses stay missing), then seeds are aligned
by step.  The line is the mean and the band is ± 1 sample std (``band="std"``) or
the min-max range (``band="minmax"``) over the seeds that have a finite value at that
step; with one seed there is no band.  On time axes each step sits at its mean
cumulative optimizer time over seeds.

For a log loss axis (``loss_curve(log=True)``) the smoothing, the mean and the std are
of ``log L`` (geometric): an arithmetic mean of losses that span orders of magnitude
follows the worst seed and one spike fills its whole window, and mean − std < 0 has
no place on a log axis, so the band vanished exactly where seeds disagree most.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from second_order.suite.report.runinfo import run_status, steps_per_epoch
from second_order.suite.report.style import MethodStyle, method_style
from second_order.suite.tracking.runs import Run

BANDS = ("std", "minmax")
END_TEXT = {"budget": "budget end", "interrupted": "interrupted", "diverged": "diverged"}


@dataclasses.dataclass
class Curve:
    """One group aggregated over seeds: line ``y`` over ``x``, optional band, run ends."""

    method: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    n_runs: int
    ends: list[tuple[float, float, str]]  # (x, y, status) of runs that stopped early
    style: MethodStyle | None = None  # the group's look; default: the method's

    def __post_init__(self) -> None:
        if self.style is None:
            self.style = method_style(self.method)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values (shorter at the start).

    Non-finite entries (NaN/inf after divergence) are ignored in the windows and
    stay NaN in the output; ``window <= 1`` returns the raw values (inf -> NaN).
    """
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    if window <= 1:
        return np.where(finite, y, np.nan)
    kernel = np.ones(int(window))
    sums = np.convolve(np.where(finite, y, 0.0), kernel)[: y.size]
    counts = np.convolve(finite.astype(np.float64), kernel)[: y.size]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    return np.where(finite, out, np.nan)


def align(keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Put per-run ``values`` on the union of their ``keys`` (step or epoch).

    Returns ``(grid, matrix)`` with one row per run, NaN where a run has no value.
    """
    keys = [np.asarray(k, dtype=np.float64) for k in keys]
    grid = np.unique(np.concatenate([k[np.isfinite(k)] for k in keys])) if keys else np.array([])
    matrix = np.full((len(keys), grid.size), np.nan)
    for row, k, v in zip(matrix, keys, values):
        ok = np.isfinite(k)
        row[np.searchsorted(grid, k[ok])] = np.asarray(v, dtype=np.float64)[ok]
    return grid, matrix


def aggregate(matrix: np.ndarray, band: str = "std") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise ``(mean, lo, hi)`` over finite entries; band NaN below two values."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    finite = np.isfinite(matrix)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.where(finite, matrix, 0.0).sum(axis=0) / count
        if band == "std":
            var = np.where(finite, matrix - mean, 0.0) ** 2
            std = np.sqrt(var.sum(axis=0) / (count - 1))
            lo, hi = mean - std, mean + std
        else:
            lo = np.where(finite, matrix, np.inf).min(axis=0)
            hi = np.where(finite, matrix, -np.inf).max(axis=0)
    several = count >= 2
    return mean, np.where(several, lo, np.nan), np.where(several, hi, np.nan)


def _has(table: dict[str, np.ndarray], *columns: str) -> bool:
    return all(c in table and table[c].size for c in columns)


def _ends(runs: Sequence[Run], matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, str]]:
    """Where each run that stopped early ends on the aggregated curve."""
    ends = []
    for run, row in zip(runs, matrix):
        status = run_status(run)
        finite = np.flatnonzero(np.isfinite(row))
        if status not in END_TEXT or finite.size == 0:
            continue
        i = finite[-1]
        if math.isfinite(x[i]) and math.isfinite(y[i]):
            ends.append((float(x[i]), float(y[i]), status))
    return ends


def _curve(
    runs: Sequence[Run], x: np.ndarray, matrix: np.ndarray, band: str, style: MethodStyle | None
) -> Curve | None:
    y, lo, hi = aggregate(matrix, band)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return None
    has_band = bool(np.isfinite(lo[keep]).any())
    return Curve(
        method=runs[0].optimizer,
        x=x[keep],
        y=y[keep],
        lo=lo[keep] if has_band else None,
        hi=hi[keep] if has_band else None,
        n_runs=len(runs),
        ends=_ends(runs, matrix, x, y),
        style=style,
    )


def loss_curve(
    runs: Sequence[Run],
    *,
    axis: str = "step",
    smooth: int = 50,
    band: str = "std",
    style: MethodStyle | None = None,
    log: bool = False,
) -> Curve | None:
    """Smoothed train loss of one group's runs against ``"step"`` or ``"time"``; ``log``: geometric."""
    if axis not in ("step", "time"):
        raise ValueError(f"axis must be 'step' or 'time', got {axis!r}")
    needed = ("step", "train_loss") + (("time_s",) if axis == "time" else ())
    runs = [r for r in runs if _has(r.steps, *needed)]
    if not runs:
        return None
    keys = [r.steps["step"] for r in runs]
    losses = [r.steps["train_loss"] for r in runs]
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            losses = [np.where(loss > 0, np.log(np.where(loss > 0, loss, 1.0)), np.nan) for loss in losses]
    steps, matrix = align(keys, [moving_average(loss, smooth) for loss in losses])
    x = steps if axis == "step" else mean_cumulative_time(keys, [r.steps["time_s"] for r in runs])
    curve = _curve(runs, x, matrix, band, style)
    if curve is None:
        return None
    if log:
        curve.y = np.exp(curve.y)
        curve.ends = [(ex, math.exp(ey), status) for ex, ey, status in curve.ends]
        if curve.lo is not None and curve.hi is not None:
            curve.lo, curve.hi = np.exp(curve.lo), np.exp(curve.hi)
    elif curve.lo is not None:
        curve.lo = np.maximum(curve.lo, 0.0)  # a loss is >= 0; mean - std may not be
    return curve


def mean_cumulative_time(keys: Sequence[np.ndarray], times: Sequence[np.ndarray]) -> np.ndarray:
    """Time axis shared by a group's seeds: the running sum of the mean per-step time.

    Averaging the cumulative times themselves would jump backwards where the slower
    seeds have stopped (budget ends at different steps); averaging the increments
    over the seeds still running keeps the axis increasing.
    """
    increments = [np.diff(np.asarray(t, dtype=np.float64), prepend=0.0) for t in times]
    _, matrix = align(keys, increments)
    mean_increment = aggregate(matrix)[0]
    return np.cumsum(np.where(np.isfinite(mean_increment), mean_increment, 0.0))


def common_steps_per_epoch(runs: Sequence[Run]) -> int | None:
    """The steps per epoch most runs record or show (None if none does)."""
    found = [spe for spe in map(steps_per_epoch, runs) if spe is not None]
    return collections.Counter(found).most_common(1)[0][0] if found else None


def eval_epochs(run: Run, default_spe: int | None = None) -> np.ndarray:
    """Epoch of each evaluation as ``step / steps_per_epoch``.

    The trainer's final evaluation after a budget stop is logged with the floored
    epoch (``epoch 0`` after 200 steps); this places it at the fraction reached.
    ``default_spe`` serves runs too short to show their own steps per epoch.
    """
    spe = steps_per_epoch(run) or default_spe
    if spe is None or "step" not in run.evals:
        return run.evals["epoch"]
    return run.evals["step"] / spe


def percent_scale(accuracies: Sequence[float] | np.ndarray) -> float:
    """100 when accuracies are fractions in [0, 1], else 1 (already in %)."""
    return 100.0 if all(a <= 1.0 for a in accuracies if math.isfinite(a)) else 1.0


def accuracy_curve(
    runs: Sequence[Run], *, band: str = "std", default_spe: int | None = None, style: MethodStyle | None = None
) -> Curve | None:
    """Test accuracy (%) of one group's runs against (fractional) epoch."""
    runs = [r for r in runs if _has(r.evals, "epoch", "test_acc")]
    if not runs:
        return None
    scale = percent_scale(np.concatenate([r.evals["test_acc"] for r in runs]))
    x = [eval_epochs(r, default_spe) for r in runs]
    epochs, matrix = align(x, [r.evals["test_acc"] * scale for r in runs])
    return _curve(runs, epochs, matrix, band, style)
