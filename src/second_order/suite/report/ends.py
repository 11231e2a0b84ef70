"""Markers where a run stopped early, and their legend entries.

A run that stopped before its protocol's end gets a marker in its line's colour where
its curve ends: "o" budget end (step or time budget over), "s" interrupted, "x"
diverged (the last finite value), and "^" on the top edge for an end above a capped
loss axis.  The kinds are explained once, in the legend, never by a label at each end:
labels of several methods ending near one step overlap.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from second_order.suite.report.curves import END_TEXT, Curve

END_MARKERS = {"budget": "o", "interrupted": "s", "diverged": "x"}
OFF_SCALE = "off scale"  # an end above a capped loss axis, drawn on its top edge


def mark_ends(ax: Axes, curve: Curve, ytop: float | None) -> set[str]:
    """A marker at every early end of ``curve``; returns the kinds drawn (for :func:`end_proxies`)."""
    st = curve.style
    assert st is not None, "curves are styled before drawing"
    kinds: set[str] = set()
    for x, y, status in sorted(curve.ends):
        off_scale = ytop is not None and y > ytop
        marker = "^" if off_scale else END_MARKERS[status]
        hollow = marker != "x"
        y_drawn = ytop if ytop is not None and off_scale else y
        ax.plot([x], [y_drawn], linestyle="none", marker=marker, markersize=5,
                markeredgewidth=1.3, color=st.color, markerfacecolor="white" if hollow else st.color,
                zorder=5, clip_on=False)  # fmt: skip
        kinds.add(status)
        if off_scale:
            kinds.add(OFF_SCALE)
    return kinds


def end_proxies(kinds: set[str]) -> list[Line2D]:
    """Legend entries for the end markers drawn (grey: the colour is the method's)."""
    texts = dict(END_TEXT, **{OFF_SCALE: "end above the axis"})
    markers = dict(END_MARKERS, **{OFF_SCALE: "^"})
    return [Line2D([], [], linestyle="none", marker=markers[k], markersize=5, markeredgewidth=1.3, color="0.35",
                   markerfacecolor="0.35" if markers[k] == "x" else "white", label=texts[k])
            for k in (*END_MARKERS, OFF_SCALE) if k in kinds]  # fmt: skip
