"""The paper's figures (slides 1-11) and a five-method overview, drawn from runs.

Aggregation over seeds: each seed's per-step training loss is first smoothed with a
trailing moving average of ``smooth`` steps (1 = raw; non-finite losses stay
missing), then seeds are aligned by step.  The line is the mean and the band is
± 1 sample std (``band="std"``) or the min-max range (``band="minmax"``) over the
seeds that have a finite value at that step; with one seed there is no band.  On
time axes each step sits at its mean cumulative optimizer time over seeds.

A run that stopped early gets a marker where its loss ends: "o" with "budget end"
(step/time budget over) or "interrupted", "x" with "diverged" (last finite loss).
Methods without runs are skipped with a :class:`MissingMethodWarning`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from second_order.suite.report.style import METHODS, method_style, new_figure, save_figure, with_paper_style
from second_order.suite.report.tables import group_by_method, percent_scale, run_status, status_counts
from second_order.suite.tracking.runs import Run

BANDS = ("std", "minmax")
END_TEXT = {"budget": "budget end", "interrupted": "interrupted", "diverged": "diverged"}
MAX_POINTS = 2000  # per drawn line; smoothed curves are thinned to about this many points
MNIST_TRAIN = 60000  # last-resort steps per epoch: MNIST_TRAIN // batch size
CLIP_FACTOR = 1.5  # linear loss axes stop at 1.5 x the initial loss when a curve explodes


class MissingMethodWarning(UserWarning):
    """A figure names a method for which there are no (usable) runs."""


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One output figure: file name, x axis kind, methods drawn, paper slide number."""

    name: str
    kind: str  # "step" | "time" | "epoch"
    methods: tuple[str, ...]
    slide: int | None = None
    log_time: bool = False


def _pair(slide: int, kind: str, other: tuple[str, ...]) -> FigureSpec:
    what = {"step": "loss_vs_step", "time": "loss_vs_time", "epoch": "acc_vs_epoch"}[kind]
    return FigureSpec(f"fig{slide:02d}_{what}_{other[-1]}", kind, ("sgd",) + other, slide)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig00_overview_loss_vs_time", "time", METHODS, None, log_time=True),
    _pair(1, "step", ("newton",)),
    _pair(2, "time", ("newton",)),
    _pair(3, "step", ("newton_damped",)),
    _pair(4, "time", ("newton_damped",)),
    _pair(5, "epoch", ("newton_damped",)),
    _pair(6, "step", ("hessian_free",)),
    _pair(7, "time", ("hessian_free",)),
    _pair(8, "epoch", ("hessian_free",)),
    _pair(9, "step", ("hessian_free", "gauss_newton")),
    _pair(10, "time", ("hessian_free", "gauss_newton")),
    _pair(11, "epoch", ("hessian_free", "gauss_newton")),
)


@dataclasses.dataclass
class Curve:
    """One method aggregated over seeds: line ``y`` over ``x``, optional band, run ends."""

    method: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    n_runs: int
    ends: list[tuple[float, float, str]]  # (x, y, status) of runs that stopped early


# ------------------------------------------------------------------ aggregation


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


def _curve(method: str, runs: Sequence[Run], x: np.ndarray, matrix: np.ndarray, band: str) -> Curve | None:
    y, lo, hi = aggregate(matrix, band)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return None
    has_band = bool(np.isfinite(lo[keep]).any())
    return Curve(
        method=method,
        x=x[keep],
        y=y[keep],
        lo=lo[keep] if has_band else None,
        hi=hi[keep] if has_band else None,
        n_runs=len(runs),
        ends=_ends(runs, matrix, x, y),
    )


def loss_curve(runs: Sequence[Run], *, axis: str = "step", smooth: int = 50, band: str = "std") -> Curve | None:
    """Smoothed train loss of one method's runs against ``"step"`` or ``"time"``."""
    if axis not in ("step", "time"):
        raise ValueError(f"axis must be 'step' or 'time', got {axis!r}")
    needed = ("step", "train_loss") + (("time_s",) if axis == "time" else ())
    runs = [r for r in runs if _has(r.steps, *needed)]
    if not runs:
        return None
    keys = [r.steps["step"] for r in runs]
    steps, matrix = align(keys, [moving_average(r.steps["train_loss"], smooth) for r in runs])
    x = steps if axis == "step" else mean_cumulative_time(keys, [r.steps["time_s"] for r in runs])
    curve = _curve(runs[0].optimizer, runs, x, matrix, band)
    if curve is not None and curve.lo is not None:
        curve.lo = np.maximum(curve.lo, 0.0)  # a loss is >= 0; mean - std may not be
    return curve


def mean_cumulative_time(keys: Sequence[np.ndarray], times: Sequence[np.ndarray]) -> np.ndarray:
    """Time axis shared by a method's seeds: the running sum of the mean per-step time.

    Averaging the cumulative times themselves would jump backwards where the slower
    seeds have stopped (budget ends at different steps); averaging the increments
    over the seeds still running keeps the axis increasing.
    """
    increments = [np.diff(np.asarray(t, dtype=np.float64), prepend=0.0) for t in times]
    _, matrix = align(keys, increments)
    mean_increment = aggregate(matrix)[0]
    return np.cumsum(np.where(np.isfinite(mean_increment), mean_increment, 0.0))


def steps_per_epoch(run: Run) -> int | None:
    """Optimizer steps per epoch, recovered from the logs (None if they cannot tell).

    steps.csv gives it exactly (step ``spe + 1`` is the first row of epoch 1); else
    the eval rows do (``step / epoch`` is smallest, and exact, at epoch boundaries).
    """
    step, epoch = run.steps.get("step", np.array([])), run.steps.get("epoch", np.array([]))
    later = step[epoch >= 1] if step.size == epoch.size else np.array([])
    if later.size:
        return int(later.min()) - 1
    e, s = run.evals.get("epoch", np.array([])), run.evals.get("step", np.array([]))
    ratios = s[e >= 1] / e[e >= 1] if s.size == e.size else np.array([])
    return int(ratios.min()) if ratios.size else None


def common_steps_per_epoch(runs: Sequence[Run]) -> int | None:
    """The steps per epoch most runs show, else MNIST's 60000 // ``trainer.batch_size``."""
    found = [spe for spe in map(steps_per_epoch, runs) if spe is not None]
    if found:
        return collections.Counter(found).most_common(1)[0][0]
    batches = [r.config.get("trainer", {}).get("batch_size") for r in runs if isinstance(r.config.get("trainer"), dict)]
    batches = [b for b in batches if isinstance(b, int) and b > 0]
    return MNIST_TRAIN // batches[0] if batches else None


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


def accuracy_curve(runs: Sequence[Run], *, band: str = "std", default_spe: int | None = None) -> Curve | None:
    """Test accuracy (%) of one method's runs against (fractional) epoch."""
    runs = [r for r in runs if _has(r.evals, "epoch", "test_acc")]
    if not runs:
        return None
    scale = percent_scale(np.concatenate([r.evals["test_acc"] for r in runs]))
    x = [eval_epochs(r, default_spe) for r in runs]
    epochs, matrix = align(x, [r.evals["test_acc"] * scale for r in runs])
    return _curve(runs[0].optimizer, runs, epochs, matrix, band)


def _curves(runs: Sequence[Run], methods: Sequence[str] | None, build: Callable[[list[Run]], Curve | None]) -> list[Curve]:
    """Build one curve per method, warning about methods without usable runs."""
    groups = group_by_method(runs)
    curves = []
    for method in methods if methods is not None else list(groups):
        curve = build(groups[method]) if method in groups else None
        if curve is None:
            why = "no runs" if method not in groups else "no usable data"
            warnings.warn(f"{method}: {why}; left out of the figure", MissingMethodWarning, stacklevel=3)
        else:
            curves.append(curve)
    return curves


# --------------------------------------------------------------------- drawing


def _height(curves: Sequence[Curve]) -> float:
    """Figure height: the axes keep ~2 in; legends above them take up to three rows."""
    return 2.55 if len(curves) <= 2 else 2.9


def _draw(ax: Axes, curve: Curve, *, stride: int = 1, markers: bool = False) -> None:
    """Mean line plus band for one curve, thinned by ``stride`` (last point kept)."""
    st = method_style(curve.method)
    idx = np.unique(np.r_[np.arange(0, curve.x.size, max(stride, 1)), curve.x.size - 1])
    ax.plot(curve.x[idx], curve.y[idx], color=st.color, linestyle=st.linestyle,
            marker=st.marker if markers else None, label=st.label, zorder=3)  # fmt: skip
    if curve.lo is not None and curve.hi is not None:
        lo = np.where(curve.lo > 0, curve.lo, np.nan) if ax.get_yscale() == "log" else curve.lo
        ax.fill_between(curve.x[idx], lo[idx], curve.hi[idx], color=st.color, alpha=0.18, linewidth=0, zorder=2)


def _stride(n: int, smooth: int) -> int:
    """Thin long smoothed curves (never raw ones, whose noise is the point)."""
    return max(1, min(math.ceil(n / MAX_POINTS), smooth // 5))


def _axes_fraction(ax: Axes, value: float, which: str) -> float:
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    scale = ax.get_xscale() if which == "x" else ax.get_yscale()
    if scale == "log":
        if value <= 0 or lo <= 0:
            return 0.0
        value, lo, hi = math.log10(value), math.log10(lo), math.log10(hi)
    return (value - lo) / (hi - lo) if hi != lo else 0.5


def _mark_ends(ax: Axes, curve: Curve, ytop: float | None) -> None:
    """Marker at every early end, one annotation per kind of end and method."""
    st = method_style(curve.method)
    annotated: set[str] = set()
    for x, y, status in sorted(curve.ends):
        off_scale = ytop is not None and y > ytop
        y = ytop if off_scale else y
        cross = status == "diverged"
        ax.plot([x], [y], linestyle="none", marker="x" if cross else "o", markersize=5, markeredgewidth=1.3,
                color=st.color, markerfacecolor=st.color if cross else "white", zorder=5, clip_on=False)  # fmt: skip
        if status in annotated:
            continue
        annotated.add(status)
        right = _axes_fraction(ax, x, "x") > 0.6
        below = _text_below(ax, curve, x, y)
        ax.annotate(END_TEXT[status] + (" (off scale)" if off_scale else ""), (x, y),
                    xytext=(-5 if right else 5, -6 if below else 5), textcoords="offset points",
                    ha="right" if right else "left", va="top" if below else "bottom",
                    fontsize=8, color=st.color, zorder=6)  # fmt: skip


def _text_below(ax: Axes, curve: Curve, x: float, y: float) -> bool:
    """Put a label below an end point when the line arrives from above (or at the top)."""
    frac = _axes_fraction(ax, y, "y")
    if frac > 0.85 or frac < 0.15:
        return frac > 0.85
    i = int(np.searchsorted(curve.x, x))
    before = curve.y[max(0, i - max(1, curve.x.size // 20))]
    return bool(before > y)


AUTO_LOG_FACTOR = 10.0  # switch a loss figure to a log axis when a curve exceeds this × its start


def _limit_loss_axis(ax: Axes, curves: Sequence[Curve], log_loss: bool) -> float | None:
    """On a linear axis, cap exploding losses at ``CLIP_FACTOR`` x the initial loss.

    Returns the cap when it was applied (markers above it are drawn on the edge).
    """
    if log_loss or not curves:
        return None
    start = max(float(c.y[0]) for c in curves)
    cap = CLIP_FACTOR * start
    values = np.concatenate([np.r_[c.y, c.lo if c.lo is not None else [], c.hi if c.hi is not None else []]
                             for c in curves])  # fmt: skip
    if not (start > 0 and np.nanmax(values) > cap):
        return None
    bottom = float(np.nanmin(values))
    ax.set_ylim(bottom - 0.05 * (cap - bottom), cap)
    return cap


def _band_proxy(band: str) -> Patch:
    text = "±1 std over seeds" if band == "std" else "min–max over seeds"
    return Patch(facecolor="0.55", alpha=0.35, linewidth=0, label=text)


def _legend(fig: Figure, ax: Axes, curves: Sequence[Curve], band: str) -> None:
    """Legend above the axes (never over a curve), in as many columns (<= 3) as fit."""
    if not curves:
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center")
        return
    handles, labels = ax.get_legend_handles_labels()
    if any(c.lo is not None for c in curves):
        handles.append(_band_proxy(band))
        labels.append(handles[-1].get_label())
    renderer = fig.canvas.get_renderer()
    for ncols in range(min(3, len(handles)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside upper center", ncols=ncols, frameon=False)
        if ncols == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            return
        legend.remove()


def loss_label(smooth: int) -> str:
    """Y-axis label that says how the loss was smoothed."""
    return f"train loss ({smooth}-step moving avg.)" if smooth > 1 else "train loss (per step, raw)"


@with_paper_style
def plot_loss(
    runs: Sequence[Run],
    methods: Sequence[str] | None = None,
    *,
    axis: str = "step",
    smooth: int = 50,
    log_loss: bool = False,
    band: str = "std",
    log_time: bool = False,
) -> Figure:
    """Train loss of ``methods`` (default: all present) against ``"step"`` or ``"time"``."""
    curves = _curves(runs, methods, lambda rs: loss_curve(rs, axis=axis, smooth=smooth, band=band))
    # A loss that grows by orders of magnitude (undamped Newton) is readable only on a log axis.
    log_loss = log_loss or any(np.nanmax(c.y) > AUTO_LOG_FACTOR * abs(float(c.y[0])) for c in curves if c.y.size)
    fig = new_figure(height=_height(curves))
    ax = fig.add_subplot()
    if log_loss:
        ax.set_yscale("log")
    if axis == "time" and log_time:
        ax.set_xscale("log")
    for curve in curves:
        _draw(ax, curve, stride=_stride(curve.x.size, smooth))
    ytop = _limit_loss_axis(ax, curves, log_loss)
    for curve in curves:
        _mark_ends(ax, curve, ytop)
    ax.set_xlabel("step" if axis == "step" else "wall-clock time (s)" + (", log scale" if log_time else ""))
    ax.set_ylabel(loss_label(smooth) + (", log scale" if log_loss else ""))
    if axis == "step":
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    _legend(fig, ax, curves, band)
    return fig


def plot_loss_vs_step(runs: Sequence[Run], methods: Sequence[str] | None = None, **kwargs: Any) -> Figure:
    """Train loss against optimizer step (see :func:`plot_loss` for options)."""
    return plot_loss(runs, methods, axis="step", **kwargs)


def plot_loss_vs_time(runs: Sequence[Run], methods: Sequence[str] | None = None, **kwargs: Any) -> Figure:
    """Train loss against cumulative optimizer wall-clock seconds (mean over seeds)."""
    return plot_loss(runs, methods, axis="time", **kwargs)


def plot_overview(runs: Sequence[Run], *, smooth: int = 50, log_loss: bool = False, band: str = "std") -> Figure:
    """All five methods, loss against time on a log time axis (their speeds differ ~100x)."""
    return plot_loss(runs, METHODS, axis="time", smooth=smooth, log_loss=log_loss, band=band,
                     log_time=True)  # fmt: skip


@with_paper_style
def plot_accuracy_vs_epoch(runs: Sequence[Run], methods: Sequence[str] | None = None, *, band: str = "std") -> Figure:
    """Test accuracy (%) after each epoch, mean and band over seeds."""
    spe = common_steps_per_epoch(runs)
    curves = _curves(runs, methods, lambda rs: accuracy_curve(rs, band=band, default_spe=spe))
    fig = new_figure(height=_height(curves))
    ax = fig.add_subplot()
    for curve in curves:
        _draw(ax, curve, markers=True)
    for curve in curves:
        _mark_ends(ax, curve, None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    _legend(fig, ax, curves, band)
    return fig


# ---------------------------------------------------------------------- output


def render(spec: FigureSpec, runs: Sequence[Run], *, smooth: int = 50, log_loss: bool = False, band: str = "std") -> Figure:
    """Draw the figure described by ``spec``."""
    if spec.kind == "epoch":
        return plot_accuracy_vs_epoch(runs, spec.methods, band=band)
    return plot_loss(runs, spec.methods, axis=spec.kind, smooth=smooth, log_loss=log_loss, band=band,
                     log_time=spec.log_time)  # fmt: skip


def _method_phrase(method: str) -> str:
    st = method_style(method)
    short = f"“{st.label}”; " if st.label != st.name else ""
    return f"{st.name} ({short}{st.setting})"


def caption(spec: FigureSpec, runs: Sequence[Run], *, smooth: int = 50, log_loss: bool = False, band: str = "std") -> str:
    """A paper-style caption: what is plotted, the runs behind it, how seeds were aggregated."""
    groups = group_by_method(runs)
    names = [_method_phrase(m) for m in spec.methods]
    who = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    seeds = "; ".join(f"{method_style(m).label}: {status_counts(groups.get(m, []))}" for m in spec.methods)
    spread = "±1 sample std" if band == "std" else "min–max range"
    parts = {
        "step": "Training loss against optimizer step",
        "time": "Training loss against wall-clock optimizer time in seconds (compilation, evaluation and "
        "logging excluded; each step placed at its mean time over seeds"
        + ("; log time axis" if spec.log_time else "") + ")",
        "epoch": "Test accuracy (%) after each epoch (a run stopped mid-epoch is evaluated at the fraction of "
        "an epoch it reached)",
    }  # fmt: skip
    text = f"{parts[spec.kind]}: {who}; MNIST, 784-10-10 ReLU MLP, batch 64. Runs: {seeds}."
    if spec.kind != "epoch":
        text += (f" Per-step loss smoothed with a {smooth}-step trailing moving average." if smooth > 1
                 else " Raw per-step loss.") + (" Log loss axis." if log_loss else "")  # fmt: skip
    text += (f" Line: mean over the seeds that reached that point; band: {spread} over seeds (none for a single "
             "seed). o budget end: the run's step/time budget ended; x diverged: last finite value of a "
             "diverged run.")  # fmt: skip
    if spec.slide is not None:
        text += f" Reproduces slide {spec.slide} of the paper."
    return text


def make_all_figures(
    runs: Sequence[Run], out_dir: Path | str, *, smooth: int = 50, log_loss: bool = False, band: str = "std"
) -> list[Path]:
    """Write every figure in :data:`FIGURES` (PNG + PDF) and ``captions.md``; returns paths."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    captions = ["# Figure captions", ""]
    for spec in FIGURES:
        fig = render(spec, runs, smooth=smooth, log_loss=log_loss, band=band)
        paths += save_figure(fig, out_dir, spec.name)
        captions += [f"**{spec.name}.** " + caption(spec, runs, smooth=smooth, log_loss=log_loss, band=band), ""]
    (out_dir / "captions.md").write_text("\n".join(captions))
    paths.append(out_dir / "captions.md")
    return paths
