"""How adaptive methods adapt: the trajectories of their logged state against the step.

Damping that Levenberg–Marquardt adjusts, a trust region's radius, the reduction ratio
ρ and the fraction of accepted steps are per-step diagnostics in ``steps.csv``.  A
figure here is drawn when some run logged its columns, whatever the optimizer: one
panel per column, one line per group (mean over its seeds of a trailing moving
average; for the heavy-tailed ρ the median of a moving median), coloured and labelled
as in every other figure.  A group whose first column never changes (a fixed λ) is left
out of the figure and named in its caption.  Nothing here knows which
optimizer logs what.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from second_order.suite.report.curves import moving_average
from second_order.suite.report.diagnostics import logged
from second_order.suite.report.grouping import Group
from second_order.suite.report.style import new_figure, save_figure, with_paper_style


@dataclasses.dataclass(frozen=True)
class Panel:
    """One logged column: its axis label, log scale, and a display range (values outside are clipped)."""

    column: str
    label: str
    log: bool = False
    clip: tuple[float, float] | None = None
    median: bool = False  # trailing moving median and median over seeds (for heavy-tailed ρ), else means

    @property
    def symbol(self) -> str:
        """The quantity's symbol, the label's last word (``"damping λ"`` → ``"λ"``), for captions."""
        return self.label.split()[-1]


@dataclasses.dataclass(frozen=True)
class TrajectorySpec:
    """A figure of ``panels``, drawn for the groups whose ``panels[0].column`` changes during a run.

    A group that logs the column at one constant value (K-FAC's fixed λ) has nothing to show
    in a figure of how a method adapts it: it is named in the caption instead.
    """

    name: str
    title: str
    panels: tuple[Panel, ...]
    what: str  # caption text: what the figure shows


RHO = Panel("rho", "reduction ratio ρ", clip=(-1.0, 2.0), median=True)
#: Step functions of the state (λ, Δ), drawn as logged: a moving average would invent values between levels.
UNSMOOTHED = ("damping", "radius")
TRAJECTORIES: tuple[TrajectorySpec, ...] = (
    TrajectorySpec(
        "fig13_damping_trajectory",
        "Levenberg–Marquardt damping",
        (Panel("damping", "damping λ", log=True), RHO),
        "the damping λ used in each step's solve and the reduction ratio ρ = actual / predicted decrease of "
        "the mini-batch loss (λ grows ×3/2 when ρ < ¼, shrinks ×2/3 when ρ > ¾)",
    ),
    TrajectorySpec(
        "fig14_trust_region_trajectory",
        "Trust region",
        (Panel("radius", "trust radius Δ", log=True), RHO, Panel("accepted", "fraction accepted", clip=(0, 1))),
        "the trust-region radius Δ of each step, the reduction ratio ρ and the fraction of accepted steps",
    ),
)


def _adapts(group: Group, column: str) -> bool:
    values = [r.steps[column] for r in group.runs if logged(r, column)]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    return finite.size > 0 and bool(np.ptp(finite) > 0)


def groups_logging(spec: TrajectorySpec, groups: Sequence[Group]) -> list[Group]:
    """The groups with a run whose first column (λ, Δ) takes more than one value."""
    return [g for g in groups if _adapts(g, spec.panels[0].column)]


def groups_constant(spec: TrajectorySpec, groups: Sequence[Group]) -> list[Group]:
    """The groups that log the first column at one value (left out of the figure, named in its caption)."""
    column = spec.panels[0].column
    return [g for g in groups if any(logged(r, column) for r in g.runs) and not _adapts(g, column)]


def moving_median(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing median of the finite values among the last ``window`` (fewer at the start)."""
    y = np.where(np.isfinite(y), np.asarray(y, float), np.nan)
    if window <= 1 or y.size == 0:
        return y
    padded = np.r_[np.full(window - 1, np.nan), y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows without a finite value stay NaN
        return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)


def group_trajectory(
    group: Group, column: str, window: int, median: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, over seeds: mean of the moving average, or median of the moving median, of ``column``).

    Over the steps all seeds reached.
    """
    smooth = moving_median if median else moving_average
    series = [(r.steps["step"], smooth(r.steps[column], window)) for r in group.runs if logged(r, column)]
    if not series:
        return None
    n = min(len(s) for s, _ in series)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a diverged seed) stay NaN
        stacked = np.stack([v[:n] for _, v in series])
        centre = np.nanmedian(stacked, axis=0) if median else np.nanmean(stacked, axis=0)
    return np.asarray(series[0][0][:n]), centre


@with_paper_style
def plot_trajectory(spec: TrajectorySpec, groups: Sequence[Group], window: int = 50) -> Figure | None:
    """The figure of ``spec`` for the groups that logged its columns; None when none did."""
    shown = groups_logging(spec, groups)
    if not shown:
        return None
    fig = new_figure(width=2.6 * len(spec.panels), height=2.5)
    axes = fig.subplots(1, len(spec.panels), squeeze=False)[0]
    for ax, panel in zip(axes, spec.panels):
        for group in shown:
            line = group_trajectory(group, panel.column, 1 if panel.column in UNSMOOTHED else window, panel.median)
            if line is None:
                continue
            x, y = line
            if panel.clip is not None:
                y = np.clip(y, *panel.clip)
            st = group.style
            ax.plot(x, y, color=st.color, linestyle=st.linestyle, label=st.label)
        if panel.log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(panel.label)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=7)
    fig.suptitle(spec.title)
    return fig


def _unsmoothed(spec: TrajectorySpec) -> str:
    """``"λ unsmoothed; "`` for the panels of ``spec`` that are drawn as logged."""
    symbols = [p.symbol for p in spec.panels if p.column in UNSMOOTHED]
    return f"{' and '.join(symbols)} unsmoothed; " if symbols else ""


def trajectory_caption(
    spec: TrajectorySpec, shown: Sequence[Group], window: int, constant: Sequence[Group] = ()
) -> str:
    """What the figure shows, for which groups and seeds, and how it is smoothed."""
    names = "; ".join(f"{g.style.label} ({len(g.runs)} seed{'s' if len(g.runs) != 1 else ''})" for g in shown)
    medians = [p.symbol for p in spec.panels if p.median]
    how = ""
    if medians:
        how = f" ({' and '.join(medians)}: the median over seeds of a trailing {window}-step moving median)"
    text = (
        f"{spec.title}: {spec.what}, against the optimizer step. Each line is the mean over seeds of a trailing "
        f"{window}-step moving average{how} ({_unsmoothed(spec)}ρ clipped to [−1, 2] for display). Runs: {names}."
    )
    if constant:
        text += f" Not drawn (constant {spec.panels[0].symbol}): {', '.join(g.style.label for g in constant)}."
    return text


def make_trajectory_figures(groups: Sequence[Group], out_dir: Path, window: int = 50) -> tuple[list[Path], list[str]]:
    """Every trajectory figure some group has data for: (paths written, caption lines)."""
    paths: list[Path] = []
    captions: list[str] = []
    for spec in TRAJECTORIES:
        fig = plot_trajectory(spec, groups, window)
        if fig is None:
            continue
        paths += save_figure(fig, out_dir, spec.name)
        shown, constant = groups_logging(spec, groups), groups_constant(spec, groups)
        captions += [f"**{spec.name}.** " + trajectory_caption(spec, shown, window, constant), ""]
    return paths, captions
