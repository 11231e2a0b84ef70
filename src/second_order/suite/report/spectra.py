"""The curvature each method sees: figures from ``curvature.csv`` (``diagnostics=curvature``).

* ``fig21_curvature_along_training``: against the step, the Hessian's largest and
  smallest eigenvalue, its negative mass (the fraction of eigenvalues below
  ``−ε·max|λ|``) and the Gauss-Newton matrix's largest eigenvalue, one line per group
  (mean over its seeds).
* ``fig22_spectral_density``: one panel per group, the Hessian's SLQ spectral density
  at its first, middle and last measurement, Gaussian-broadened on a symmetric-log
  eigenvalue axis (as PyHessian broadens SLQ nodes; here in the axis' coordinate, so
  that eigenvalues from 10⁻² to 10² are drawn alike).

Runs that measured curvature feed only these figures (:func:`split_measured`): their
training is that of the same run without measurements, so their losses would
duplicate those runs in the loss figures and tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

from second_order.suite.report.grouping import Group
from second_order.suite.report.style import new_figure, save_figure, with_paper_style
from second_order.suite.tracking.runs import Run

LINTHRESH = 1e-2  # symlog axes: linear within ±1e-2, logarithmic outside
SMOOTH = 5  # fig21: trailing mean over this many measurements (single mini-batches are noisy)
MARKERS_UP_TO = 20  # measurements per line drawn with markers
BROADENING = 0.06  # fig22: Gaussian σ in the symlog coordinate u = sign(λ)·log10(1 + |λ|/LINTHRESH)
DENSITY_FLOOR = 1e-5  # fig22: lowest density drawn
PANELS = (
    ("hessian_top1", "Hessian λ_max", "log"),
    ("hessian_bottom1", "Hessian λ_min", "symlog"),
    ("hessian_neg_mass", "Hessian negative mass (%)", "linear"),
    ("gauss_newton_top1", "Gauss-Newton λ_max", "log"),
)


def split_measured(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """(runs for the loss figures and tables, runs with curvature measurements).

    Measured runs go to the loss figures only when no run without measurements is there.
    """
    measured = [r for r in runs if r.curvature]
    plain = [r for r in runs if not r.curvature]
    return (plain or list(runs)), measured


def _series(group: Group, column: str, window: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, mean over seeds, then a trailing mean over ``window`` measurements), on the measurements all
    seeds have.

    NaN (a value not found) is left out of both means; a window with none is NaN.  Series of at most
    :data:`MARKERS_UP_TO` measurements are not smoothed: they are drawn point by point, with markers.
    """
    cols = [r.curvature for r in group.runs if column in r.curvature and len(r.curvature[column])]
    if not cols:
        return None
    n = min(len(c["step"]) for c in cols)
    stacked = np.stack([np.asarray(c[column][:n], float) for c in cols])
    found = np.isfinite(stacked)
    counts = found.sum(axis=0)
    mean = np.where(counts > 0, np.where(found, stacked, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)
    if n <= MARKERS_UP_TO:
        window = 1
    ok = np.isfinite(mean)
    sums = np.cumsum(np.concatenate([[0.0], np.where(ok, mean, 0.0)]))
    hits = np.cumsum(np.concatenate([[0], ok.astype(int)]))
    lo = np.maximum(np.arange(1, n + 1) - window, 0)
    got = hits[1:] - hits[lo]
    return cols[0]["step"][:n], np.where(got > 0, (sums[1:] - sums[lo]) / np.maximum(got, 1), np.nan)


@with_paper_style
def plot_curvature_along_training(groups: Sequence[Group]) -> Figure:
    fig = new_figure(width=7.0, height=5.2)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (column, label, scale) in zip(axes, PANELS):
        for group in groups:
            line = _series(group, column, SMOOTH)
            if line is None:
                continue
            x, y = line
            if column.endswith("neg_mass"):
                y = 100 * y
            st = group.style
            marker = "." if len(x) <= MARKERS_UP_TO else None
            zero = (y <= 0) if scale == "log" else np.zeros(len(y), bool)  # 0 has no place on a log axis
            ax.plot(x, np.where(zero, np.nan, y), color=st.color, linestyle=st.linestyle, marker=marker,
                    markersize=4, label=st.label)  # fmt: skip
            if zero.any():  # drawn as ▼ on the lower edge (x in data, y in axes coordinates)
                ax.plot(x[zero], np.full(zero.sum(), 0.02), "v", color=st.color, markersize=4, clip_on=False,
                        transform=ax.get_xaxis_transform())  # fmt: skip
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=LINTHRESH)
            # ticks at 1 and 3 per decade, printed as numbers: with decades alone (10^0, -10^0)
            # a λ_min of -3.9 or -0.7 could not be read off the axis
            ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=LINTHRESH, base=10, subs=(1.0, 3.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.axhline(0.0, color="0.6", linewidth=0.6)
        elif scale == "log":
            ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylabel(label)
    for ax in axes[2:]:
        ax.set_xlabel("optimizer step (linear to 10, then log)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=7)
    fig.suptitle("Curvature along training (mini-batch of the next step)")
    return fig


def density_steps(run: Run) -> list[int]:
    """Indices of the first, middle and last measurement (fewer when there are fewer)."""
    n = len(run.curvature.get("step", []))
    return sorted({0, n // 2, n - 1}) if n else []


def _symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log10(1 + np.abs(x) / LINTHRESH)


def broadened_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Σⱼ wⱼ N(u; u(θⱼ), σ²) on ``grid`` (symlog coordinate u): integrates to Σ wⱼ = 1."""
    z = (grid[:, None] - _symlog(nodes)[None, :]) / BROADENING
    return np.exp(-0.5 * z**2) @ weights / (BROADENING * np.sqrt(2 * np.pi))


def _draw_density(ax: Axes, run: Run, grid: np.ndarray) -> None:
    c = run.curvature
    count = sum(1 for k in c if k.startswith("hessian_slq_node"))
    for i, colour in zip(density_steps(run), ("#9ecae1", "#3182bd", "#08306b")):
        nodes = np.array([c[f"hessian_slq_node{j}"][i] for j in range(count)])
        weights = np.array([c[f"hessian_slq_weight{j}"][i] for j in range(count)])
        used = np.isfinite(nodes)  # after a Lanczos breakdown the unused nodes are NaN (weight 0)
        density = broadened_density(nodes[used], weights[used], grid)
        ax.plot(
            grid, np.where(density > DENSITY_FLOOR, density, np.nan), color=colour, label=f"step {int(c['step'][i])}"
        )
    ax.set_yscale("log")
    ax.set_ylim(bottom=DENSITY_FLOOR)


@with_paper_style
def plot_spectral_density(groups: Sequence[Group]) -> Figure:
    shown = [g for g in groups if density_steps(g.runs[0])]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig = new_figure(width=2.5 * cols, height=2.1 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=True)).ravel()
    reach = max(
        float(np.nanmax(np.abs(np.stack([v for k, v in g.runs[0].curvature.items() if "_slq_node" in k]))))
        for g in shown
    )
    end = float(_symlog(np.array(reach))) + 3 * BROADENING
    grid = np.linspace(-end, end, 600)
    for ax, group in zip(axes, shown):
        _draw_density(ax, group.runs[0], grid)
        ax.set_title(f"{group.style.label} (seed {group.runs[0].seed})", fontsize=8)
        ticks = [t for t in (-100, -1, 0, 1, 100) if abs(t) <= reach]
        ax.set_xticks(_symlog(np.array(ticks, float)), [str(t) for t in ticks])
        ax.legend(fontsize=6, loc="upper right")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    for ax in axes[: len(shown)][-cols:]:
        ax.set_xlabel("Hessian eigenvalue (symmetric log)")
    for ax in axes[::cols]:
        ax.set_ylabel("density (per unit of the axis)")
    fig.suptitle("Hessian spectral density (stochastic Lanczos quadrature)")
    return fig


def make_spectrum_figures(groups: Sequence[Group], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Figures 21-22 for the groups with curvature measurements: (paths written, caption lines)."""
    shown = [g for g in groups if any(r.curvature for r in g.runs)]
    if not shown:
        return [], []
    names = "; ".join(f"{g.style.label} ({len(g.runs)} seed{'s' if len(g.runs) != 1 else ''})" for g in shown)
    paths = save_figure(plot_curvature_along_training(shown), out_dir, "fig21_curvature_along_training")
    paths += save_figure(plot_spectral_density(shown), out_dir, "fig22_spectral_density")
    captions = [
        "**fig21_curvature_along_training.** Curvature along training, measured every few steps on the "
        "mini-batch of the next step, off the optimizer clock: the Hessian's largest and smallest eigenvalue "
        "(Lanczos, full reorthogonalisation), the fraction of its eigenvalues below −ε·max|λ| (stochastic "
        "Lanczos quadrature) and the Gauss-Newton matrix's largest eigenvalue; mean over seeds of a trailing "
        f"mean over {SMOOTH} measurements (one mini-batch each is noisy; runs with at most {MARKERS_UP_TO} "
        "measurements are drawn point by point, with markers). On the log axes a ▼ on the lower edge marks a "
        f"value of 0. Runs: {names}.",
        "",
        "**fig22_spectral_density.** The Hessian's spectral density estimated by stochastic Lanczos quadrature at "
        "the first, middle and last measurement of one seed, on a symmetric-log eigenvalue axis (linear within "
        f"±{LINTHRESH:g}): each quadrature node is broadened into a Gaussian of width {BROADENING:g} in the "
        "axis' coordinate, so the area under a curve is 1 and the area over an interval its fraction of "
        f"eigenvalues; densities below {DENSITY_FLOOR:g} are not drawn. Most eigenvalues of a small ReLU "
        "network's mini-batch Hessian are zero (the peak at 0).",
        "",
    ]
    return paths, captions
