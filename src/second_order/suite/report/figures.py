"""The paper's figures (slides 1-11) and an overview of every optimizer, drawn from runs.

Runs are grouped by :func:`.grouping.group_runs` (optimizer and config); each group
is one line, aggregated over its seeds as described in :mod:`.curves`.  A run that
stopped early gets a marker where its loss ends, explained in the legend (:mod:`.ends`).

Warnings (:class:`MissingMethodWarning`, one line each) instead of errors: a figure
whose methods have no runs is skipped; a method without runs is left out of a figure;
a run whose segments ran on different devices is left out of time-axis figures (its
seconds add up different machines) but kept on step and epoch axes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from second_order.suite.report.captions import caption as group_caption
from second_order.suite.report.curves import (
    BANDS,
    Curve,
    accuracy_curve,
    aggregate,
    align,
    common_steps_per_epoch,
    loss_curve,
    moving_average,
)
from second_order.suite.report.ends import end_proxies, mark_ends, separate_edge_markers
from second_order.suite.report.grouping import Group, group_runs, groups_of
from second_order.suite.report.loading import ReportWarning
from second_order.suite.report.runinfo import devices, mixed_devices
from second_order.suite.report.specs import FIGURES, FigureSpec
from second_order.suite.report.spectra import make_spectrum_figures, split_measured
from second_order.suite.report.style import new_figure, save_figure, with_paper_style
from second_order.suite.report.trajectories import make_trajectory_figures
from second_order.suite.tracking.runs import Run

__all__ = ["BANDS", "FIGURES", "Curve", "FigureSpec", "MissingMethodWarning", "accuracy_curve", "aggregate",
           "align", "caption", "loss_curve", "make_all_figures", "moving_average", "plot_accuracy_vs_epoch",
           "plot_loss", "plot_loss_vs_step", "plot_loss_vs_time", "plot_overview", "render"]  # fmt: skip

MAX_POINTS = 2000  # per drawn line; smoothed curves are thinned to about this many points
CLIP_FACTOR = 1.5  # linear loss axes stop at 1.5 x the initial loss when a curve explodes


class MissingMethodWarning(ReportWarning):
    """A figure names a method for which there are no (usable) runs, or leaves a run out."""


def _missing(message: str) -> None:
    warnings.warn(message, MissingMethodWarning, stacklevel=3)


def _groups(runs: Sequence[Run], groups: Sequence[Group] | None) -> Sequence[Group]:
    return groups if groups is not None else group_runs(runs)


def time_comparable(group: Group) -> list[Run]:
    """The group's runs whose time axis is one device's; warns about each other one."""
    kept = []
    for run in group.runs:
        if mixed_devices(run):
            _missing(f"{run.path}: segments ran on different devices ({' + '.join(devices(run))}); "
                     "left out of time-axis figures")  # fmt: skip
        else:
            kept.append(run)
    return kept


def _curves(
    groups: Sequence[Group],
    methods: Sequence[str] | None,
    build: Callable[[Sequence[Run], Group], Curve | None],
    *,
    time_axis: bool = False,
    quiet: bool = False,
) -> list[Curve]:
    """One curve per group of ``methods``, warning (unless ``quiet``) about methods without usable runs."""
    curves = []
    for method, method_groups in groups_of(groups, methods).items():
        if not method_groups and not quiet:
            _missing(f"{method}: no runs; left out of the figure")
        for group in method_groups:
            runs = time_comparable(group) if time_axis else group.runs
            curve = build(runs, group) if runs else None
            if curve is None and not quiet:
                _missing(f"{group.label}: no usable data; left out of the figure")
            elif curve is not None:
                curves.append(curve)
    return curves


# --------------------------------------------------------------------- drawing


def _height(curves: Sequence[Curve]) -> float:
    """Figure height: the axes keep ~2 in; the legend above them grows with the groups drawn."""
    return 2.55 if len(curves) <= 2 else 2.9 if len(curves) <= 5 else 2.9 + 0.17 * (len(curves) - 5)


def _draw(ax: Axes, curve: Curve, *, stride: int = 1, markers: bool = False) -> None:
    """Mean line plus band for one curve, thinned by ``stride`` (last point kept)."""
    st = curve.style
    assert st is not None, "curves are styled before drawing"
    idx = np.unique(np.r_[np.arange(0, curve.x.size, max(stride, 1)), curve.x.size - 1])
    ax.plot(curve.x[idx], curve.y[idx], color=st.color, linestyle=st.linestyle,
            marker=st.marker if markers else None, label=st.label, zorder=3)  # fmt: skip
    if curve.lo is not None and curve.hi is not None:
        lo = np.where(curve.lo > 0, curve.lo, np.nan) if ax.get_yscale() == "log" else curve.lo
        if idx.size == 1:  # one point (e.g. a single evaluation): a band needs two, so an error bar
            y = curve.y[idx]
            ax.errorbar(curve.x[idx], y, yerr=[y - lo[idx], curve.hi[idx] - y], color=st.color, alpha=0.6,
                        linestyle="none", capsize=3, zorder=2)  # fmt: skip
        else:
            ax.fill_between(curve.x[idx], lo[idx], curve.hi[idx], color=st.color, alpha=0.18, linewidth=0, zorder=2)


def _stride(n: int, smooth: int) -> int:
    """Thin long smoothed curves (never raw ones, whose noise is the point)."""
    return max(1, min(math.ceil(n / MAX_POINTS), smooth // 5))


SHORT_RUN_FRACTION = 0.05  # a step axis turns logarithmic when a curve ends before 5 % of the longest


def _short_runs_beside_long(curves: Sequence[Curve]) -> bool:
    """A budget-limited run (100 Newton steps) beside full ones (6,559 steps) would be a sliver at the left."""
    ends = [float(np.nanmax(c.x)) for c in curves if c.x.size]
    return len(ends) > 1 and min(ends) > 0 and min(ends) < SHORT_RUN_FRACTION * max(ends)


AUTO_LOG_FACTOR = 10.0  # switch a loss figure to a log axis when a curve exceeds this × its start


def _limit_loss_axis(ax: Axes, curves: Sequence[Curve], log_loss: bool, log_cap: float | None = None) -> float | None:
    """Cap exploding losses: a linear axis at ``CLIP_FACTOR`` x the initial loss, a log axis
    at ``log_cap`` x (when given; else a log axis shows everything).

    Returns the cap when it was applied (markers above it are drawn on the edge).
    """
    factor = log_cap if log_loss else CLIP_FACTOR
    if factor is None or not curves:
        return None
    start = max(float(c.y[0]) for c in curves)
    cap = factor * start
    values = np.concatenate([np.r_[c.y, c.lo if c.lo is not None else [], c.hi if c.hi is not None else []]
                             for c in curves])  # fmt: skip
    if not (start > 0 and np.nanmax(values) > cap):
        return None
    if log_loss:
        positive = values[values > 0]
        ax.set_ylim(float(np.nanmin(positive)) / 1.2, cap)
        return cap
    bottom = float(np.nanmin(values))
    ax.set_ylim(bottom - 0.05 * (cap - bottom), cap)
    return cap


def _band_proxy(band: str) -> Patch:
    text = "±1 std over seeds" if band == "std" else "min–max over seeds"
    return Patch(facecolor="0.55", alpha=0.35, linewidth=0, label=text)


def _legend(fig: Figure, ax: Axes, curves: Sequence[Curve], band: str, ends: Collection[str] = ()) -> None:
    """Legend above the axes (never over a curve), in as many columns (<= 3) as fit.

    After the methods: the band, and the end markers drawn (``ends``, from :func:`.ends.mark_ends`).
    """
    if not curves:
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center")
        return
    handles, labels = ax.get_legend_handles_labels()
    extra: list[Any] = [_band_proxy(band)] if any(c.lo is not None for c in curves) else []
    for handle in extra + end_proxies(set(ends)):
        handles.append(handle)
        labels.append(handle.get_label())
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # an Agg canvas (style.new_figure)
    for ncols in range(min(3, len(handles)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside upper center", ncols=ncols, frameon=False)
        if ncols == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            return
        legend.remove()


def loss_label(smooth: int, log: bool = False) -> str:
    """Y-axis label that says how the loss was smoothed (``log``: a log axis, averaged in log L, i.e.
    geometric; on two lines, since one is taller than a column-width figure's axis)."""
    how = "per step, raw" if smooth <= 1 else f"{smooth}-step {'geometric ' if log else ''}moving avg."
    return f"train loss, log scale\n({how})" if log else f"train loss ({how})"


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
    groups: Sequence[Group] | None = None,
    loss_cap: float | None = None,
) -> Figure:
    """Train loss of ``methods`` (default: all present) against ``"step"`` or ``"time"``.

    One line per group of runs (``groups``, default: :func:`.grouping.group_runs` of ``runs``).
    ``loss_cap``: a log loss axis cut at ``loss_cap`` x the initial loss, so that diverging
    runs (10^11) do not squash the converging ones into one band at the bottom.
    """
    shown = _groups(runs, groups)
    build = lambda rs, g: loss_curve(rs, axis=axis, smooth=smooth, band=band, style=g.style)  # noqa: E731
    curves = _curves(shown, methods, build, time_axis=axis == "time")
    # A loss that grows by orders of magnitude (undamped Newton) is readable only on a log axis,
    # and there it is averaged in log L (see .curves).
    log_loss = log_loss or loss_cap is not None
    log_loss = log_loss or any(np.nanmax(c.y) > AUTO_LOG_FACTOR * abs(float(c.y[0])) for c in curves if c.y.size)
    if log_loss:
        build = lambda rs, g: loss_curve(rs, axis=axis, smooth=smooth, band=band, style=g.style, log=True)  # noqa: E731
        curves = _curves(shown, methods, build, time_axis=axis == "time", quiet=True)
    fig = new_figure(height=_height(curves))
    ax = fig.add_subplot()
    if log_loss:
        ax.set_yscale("log")
    log_step = axis == "step" and _short_runs_beside_long(curves)
    if (axis == "time" and log_time) or log_step:
        ax.set_xscale("log")
    for curve in curves:
        _draw(ax, curve, stride=_stride(curve.x.size, smooth))
    ytop = _limit_loss_axis(ax, curves, log_loss, loss_cap)
    ends = set().union(*(mark_ends(ax, curve, ytop) for curve in curves))
    separate_edge_markers(ax)
    # two lines on a log axis: one would be wider than a column-width figure and be clipped
    time_label = (
        "optimizer time (s, log scale;\ncompilation excluded)"
        if log_time
        else "optimizer time (s, compilation excluded)"
    )
    ax.set_xlabel(("step, log scale" if log_step else "step") if axis == "step" else time_label)
    ax.set_ylabel(loss_label(smooth, log_loss))
    if axis == "step" and not log_step:
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    _legend(fig, ax, curves, band, ends)
    return fig


def plot_loss_vs_step(runs: Sequence[Run], methods: Sequence[str] | None = None, **kwargs: Any) -> Figure:
    """Train loss against optimizer step (see :func:`plot_loss` for options)."""
    return plot_loss(runs, methods, axis="step", **kwargs)


def plot_loss_vs_time(runs: Sequence[Run], methods: Sequence[str] | None = None, **kwargs: Any) -> Figure:
    """Train loss against cumulative optimizer wall-clock seconds (mean over seeds)."""
    return plot_loss(runs, methods, axis="time", **kwargs)


def plot_overview(runs: Sequence[Run], *, smooth: int = 50, band: str = "std", loss_cap: float = 3.0) -> Figure:
    """Every optimizer found, loss against time on a log time axis (their speeds differ ~100x),
    on a log loss axis cut at ``loss_cap`` x the initial loss."""
    return plot_loss(runs, None, axis="time", smooth=smooth, band=band, log_time=True, loss_cap=loss_cap)


@with_paper_style
def plot_accuracy_vs_epoch(
    runs: Sequence[Run],
    methods: Sequence[str] | None = None,
    *,
    band: str = "std",
    groups: Sequence[Group] | None = None,
) -> Figure:
    """Test accuracy (%) after each epoch, mean and band over seeds, one line per group."""
    groups = _groups(runs, groups)
    spe = common_steps_per_epoch([r for g in groups for r in g.runs])
    curves = _curves(groups, methods, lambda rs, g: accuracy_curve(rs, band=band, default_spe=spe, style=g.style))
    fig = new_figure(height=_height(curves))
    ax = fig.add_subplot()
    for curve in curves:
        _draw(ax, curve, markers=True)
    ends = set().union(*(mark_ends(ax, curve, None) for curve in curves))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    _legend(fig, ax, curves, band, ends)
    return fig


# ---------------------------------------------------------------------- output


def render(
    spec: FigureSpec,
    runs: Sequence[Run],
    *,
    smooth: int = 50,
    log_loss: bool = False,
    band: str = "std",
    groups: Sequence[Group] | None = None,
) -> Figure:
    """Draw the figure described by ``spec``."""
    groups = _groups(runs, groups)
    if spec.kind == "epoch":
        return plot_accuracy_vs_epoch(runs, spec.methods, band=band, groups=groups)
    return plot_loss(runs, spec.methods, axis=spec.kind, smooth=smooth, log_loss=log_loss, band=band,
                     log_time=spec.log_time, groups=groups, loss_cap=spec.loss_cap)  # fmt: skip


def caption(
    spec: FigureSpec,
    runs: Sequence[Run],
    *,
    smooth: int = 50,
    log_loss: bool = False,
    band: str = "std",
    groups: Sequence[Group] | None = None,
) -> str:
    """The caption of ``spec``, written from the groups it draws (see :mod:`.captions`)."""
    shown = [g for gs in groups_of(_groups(runs, groups), spec.methods).values() for g in gs]
    return group_caption(spec, shown, smooth=smooth, log_loss=log_loss, band=band)


def make_all_figures(
    runs: Sequence[Run], out_dir: Path | str, *, smooth: int = 50, log_loss: bool = False, band: str = "std"
) -> list[Path]:
    """Write every figure in :data:`FIGURES`, the trajectory figures some run has data for
    (:mod:`.trajectories`), the curvature figures of runs that measured it (:mod:`.spectra`;
    those runs draw nothing else), PNG + PDF, and ``captions.md``; returns paths.

    A figure none of whose featured methods has runs is skipped with a warning.
    """
    out_dir = Path(out_dir)
    runs, measured = split_measured(runs)
    groups = group_runs(runs)
    present = {g.optimizer for g in groups}
    paths: list[Path] = []
    captions = ["# Figure captions", ""]
    for spec in FIGURES:
        reason = spec.skipped_because(present)
        if reason is not None:
            if spec.requires:
                continue  # an optional figure beyond the paper: silent when its runs are absent
            _missing(f"{spec.name}: {reason}; figure skipped")
            continue
        fig = render(spec, runs, smooth=smooth, log_loss=log_loss, band=band, groups=groups)
        paths += save_figure(fig, out_dir, spec.name)
        text = caption(spec, runs, smooth=smooth, log_loss=log_loss, band=band, groups=groups)
        captions += [f"**{spec.name}.** " + text, ""]
    more, more_captions = make_trajectory_figures(groups, out_dir, window=smooth)
    paths += more
    captions += more_captions
    more, more_captions = make_spectrum_figures(group_runs(measured), out_dir)
    paths += more
    captions += more_captions
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "captions.md").write_text("\n".join(captions))
    paths.append(out_dir / "captions.md")
    return paths
