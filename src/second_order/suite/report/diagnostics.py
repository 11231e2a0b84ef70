"""What each optimizer did inside its steps: the per-step diagnostics of steps.csv.

One panel per logged column, one raw (unsmoothed) line per run, coloured and labelled
by the run's group (:mod:`.grouping`).  Newton's ``solve_path`` is categorical: its
axis shows every value the optimizer can log, named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from second_order.suite.report.grouping import Group, group_runs
from second_order.suite.report.runinfo import cfg_get
from second_order.suite.report.style import new_figure, with_paper_style
from second_order.suite.tracking.runs import Run

#: Values of Newton's ``solve_path`` (``CHOLESKY, EIGH_PINV, LOW_RANK`` in second_order.optim.newton).
SOLVE_PATHS: dict[int, str] = {0: "Cholesky", 1: "eigh pinv", 2: "low rank"}

Panel = tuple[str, str, bool]  # (steps.csv column, axis label, log scale)
CG_PANELS: tuple[Panel, ...] = (
    ("cg_iterations", "CG iterations", False),
    ("cg_residual", "relative CG residual", True),
)
NEWTON_PANELS: tuple[Panel, ...] = (
    ("solve_path", "solve used", False),
    ("rank", "rank kept", False),
    ("min_eigenvalue", "min eigenvalue of H + λI", False),
)


def logged(run: Run, column: str) -> bool:
    """Whether ``run`` logged ``column`` with at least one finite value."""
    values = run.steps.get(column)
    return values is not None and bool(np.isfinite(values).any())


def finite_or_nan(values: np.ndarray) -> np.ndarray:
    """``values`` with ±inf (the optimizers' "not computed", e.g. Newton's ``min_eigenvalue``
    on the Cholesky path) as NaN: a gap in the line, as a missing value."""
    return np.where(np.isfinite(values), values, np.nan)


def set_solve_path_axis(ax) -> None:  # noqa: ANN001  (a matplotlib Axes)
    """Categorical y axis with every solve path named, whatever values the runs logged."""
    codes = sorted(SOLVE_PATHS)
    ax.set_yticks(codes, [SOLVE_PATHS[c] for c in codes])
    ax.set_ylim(codes[0] - 0.4, codes[-1] + 0.4)
    ax.grid(False, axis="y")


@with_paper_style
def plot_diagnostics(
    runs: Sequence[Run], panels: Sequence[Panel], title: str, groups: Sequence[Group] | None = None
) -> Figure | None:
    """One panel per column at least one run logged; None when no run logged any."""
    panels = [p for p in panels if any(logged(r, p[0]) for r in runs)]
    if not panels:
        return None
    wanted = {id(r) for r in runs}
    fig = new_figure(width=3.0 * len(panels), height=2.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, label, log) in zip(axes, panels):
        for group in groups if groups is not None else group_runs(runs):
            st = group.style
            for run in (r for r in group.runs if id(r) in wanted and logged(r, column)):
                ax.plot(run.steps["step"], finite_or_nan(run.steps[column]), color=st.color, linestyle=st.linestyle,
                        marker="." if column == "solve_path" else None, markersize=2,
                        label=f"{st.label} s{run.seed}")  # fmt: skip
                tol = cfg_get(run, "optimizer.tol")
                if column == "cg_residual" and isinstance(tol, (int, float)) and tol > 0:
                    ax.axhline(float(tol), color=st.color, linestyle=":", linewidth=0.8)
        values = [finite_or_nan(r.steps[column]) for r in runs if logged(r, column)]
        if log and all(np.nanmin(v) > 0 for v in values):
            ax.set_yscale("log")
        if column == "solve_path":
            set_solve_path_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig
