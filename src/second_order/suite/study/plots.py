"""The study's figures: performance profiles and the validation metric against time.

* :func:`plot_profiles` — ρ_m(τ) per method (:mod:`.profiles`), one panel per cost.
  Methods that solve no workload within the drawn τ would be flat lines at 0, hidden
  under the axis: they are named in the panel's x label instead of drawn.
* :func:`plot_metric_vs_time` — the metric the target is set on (validation accuracy
  or loss) against optimizer seconds, median over seeds at each evaluation, with the
  target as a dashed line: where a line first crosses it is the time to target.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from second_order.suite.report.curves import align
from second_order.suite.report.style import method_style, new_figure, ordered_methods, with_paper_style
from second_order.suite.study.profiles import performance_profile
from second_order.suite.study.targets import MAXIMISE
from second_order.suite.tracking.runs import Run

TAUS = np.geomspace(1.0, 64.0, 241)  # AlgoPerf draws τ in [1, 4] (marked); the curvature methods need more
METRIC_LABELS = {"val_acc": "validation accuracy (%)", "val_loss": "validation loss"}
ZOOM = {"val_acc": 10.0}  # percentage points shown below the target


@with_paper_style
def plot_profiles(costs_by_kind: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """ρ_m(τ) per method, one panel per cost (compilation excluded / included)."""
    fig = new_figure(width=7.0, height=4.2)
    axes = fig.subplots(1, len(costs_by_kind), sharey=True, squeeze=False)[0]
    legend: dict[str, Line2D] = {}
    for ax, (title, cost) in zip(axes, costs_by_kind.items()):
        profile = performance_profile(cost, TAUS)
        never = sorted(m for m in profile if not profile[m].any())
        for method in sorted(profile, key=lambda m: (-profile[m][-1], -profile[m][0], m)):
            if method in never:
                continue
            st = method_style(method)
            (line,) = ax.step(TAUS, profile[method], where="post", color=st.color, linestyle=st.linestyle)
            legend.setdefault(st.label, line)
        label = "τ = time to target / best method's"
        if never:  # in the x label, which constrained layout makes room for (free text it would not)
            names = ", ".join(method_style(m).label for m in never)
            label += "\n" + textwrap.fill(f"not drawn, solve no workload within τ ≤ {TAUS[-1]:g}: {names}", 44)
        ax.axvline(4.0, color="0.5", linewidth=0.6, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(label, fontsize=7)
    axes[0].set_ylabel("fraction of workloads solved within τ")
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=7)
    fig.suptitle("Performance profiles (Dolan & Moré 2002); dotted: τ = 4, AlgoPerf's range")
    return fig


@with_paper_style
def plot_metric_vs_time(
    runs_by_method: Mapping[str, Sequence[Run]], target: float | None, metric: str, title: str
) -> Figure:
    """``metric`` against optimizer seconds (log axis), median over each method's seeds."""
    scale = 100.0 if metric == "val_acc" else 1.0
    fig = new_figure(width=7.0, height=3.6)
    ax = fig.add_subplot()
    for method in ordered_methods(runs_by_method):
        runs = [r for r in runs_by_method[method] if metric in r.evals and "time_s" in r.evals]
        if not runs:
            continue
        _, times = align([r.evals["step"] for r in runs], [r.evals["time_s"] for r in runs])
        _, values = align([r.evals["step"] for r in runs], [r.evals[metric] for r in runs])
        ok = np.isfinite(times).any(axis=0) & np.isfinite(values).any(axis=0)
        with warnings.catch_warnings():  # an all-NaN column: a seed that stopped early
            warnings.simplefilter("ignore", RuntimeWarning)
            x, y = np.nanmedian(times[:, ok], axis=0), np.nanmedian(values[:, ok], axis=0) * scale
        st = method_style(method)
        ax.plot(x, y, color=st.color, linestyle=st.linestyle, label=f"{st.label} ({len(runs)} seeds)")
    if target is not None:
        word = "≥" if MAXIMISE[metric] else "≤"
        ax.axhline(target * scale, color="black", linewidth=0.9, linestyle="--",
                   label=f"target: {metric} {word} {target * scale:.4g}")  # fmt: skip
        if metric in ZOOM:  # zoom on the target: the first evaluations sit far below it
            ax.set_ylim(bottom=max(ax.get_ylim()[0], target * scale - ZOOM[metric]))
    ax.set_xscale("log")
    ax.set_xlabel("optimizer time (s, compilation excluded), log scale; median over seeds")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=6.5, frameon=False)
    return fig
