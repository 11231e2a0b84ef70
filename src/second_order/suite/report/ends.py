"""Markers where a run stopped early, and their legend entries.

A run that stopped before its protocol's end gets a marker in its line's colour where
its curve ends: "o" budget end (step or time budget over), "s" interrupted, "x"
diverged (the last finite value), and "^" on the top edge for an end above a capped
loss axis.  The kinds are explained once, in the legend, never by a label at each end:
labels of several methods ending near one step overlap.  Ends above the axis that would
hide one another on the top edge (two Newton variants stopped by the same time budget)
are set side by side (:func:`separate_edge_markers`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from second_order.suite.report.curves import END_TEXT, Curve

END_MARKERS = {"budget": "o", "interrupted": "s", "diverged": "x"}
OFF_SCALE = "off scale"  # an end above a capped loss axis, drawn on its top edge
MARKER_SIZE = 5.0  # points


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
        ax.plot([x], [y_drawn], linestyle="none", marker=marker, markersize=MARKER_SIZE,
                markeredgewidth=1.3, color=st.color, markerfacecolor="white" if hollow else st.color,
                zorder=5, clip_on=False, gid=OFF_SCALE if off_scale else None)  # fmt: skip
        kinds.add(status)
        if off_scale:
            kinds.add(OFF_SCALE)
    return kinds


def separate_edge_markers(ax: Axes, gap: float = MARKER_SIZE + 2.0) -> None:
    """Ends on the top edge (:data:`OFF_SCALE`) closer than ``gap`` points: one marker for the
    seeds of one method (the same colour), the methods' markers shifted right until each is
    ``gap`` from the one before. Call once the axis limits are final (positions are measured then)."""
    fig = ax.get_figure()
    assert fig is not None
    points_per_unit = 72.0 / fig.dpi  # display units (pixels) to points
    drawn = []
    for line in ax.get_lines():
        if line.get_gid() == OFF_SCALE:
            xy = (float(np.asarray(line.get_xdata(), float)[0]), float(np.asarray(line.get_ydata(), float)[0]))
            drawn.append((float(ax.transData.transform(xy)[0]) * points_per_unit, line))
    kept: dict[str, float] = {}  # colour -> where its last marker is
    previous = -float("inf")
    for at, line in sorted(drawn, key=lambda d: d[0]):
        colour = str(line.get_color())
        if at - kept.get(colour, -float("inf")) < gap:
            line.remove()  # another seed of the same method, ending at the same place
            continue
        kept[colour] = at
        shift = max(0.0, previous + gap - at)
        if shift:
            line.set_transform(ax.transData + ScaledTranslation(shift / 72.0, 0.0, fig.dpi_scale_trans))
        previous = at + shift


def end_proxies(kinds: set[str]) -> list[Line2D]:
    """Legend entries for the end markers drawn (grey: the colour is the method's)."""
    texts = dict(END_TEXT, **{OFF_SCALE: "end above the axis"})
    markers = dict(END_MARKERS, **{OFF_SCALE: "^"})
    return [Line2D([], [], linestyle="none", marker=markers[k], markersize=MARKER_SIZE, markeredgewidth=1.3,
                   color="0.35", markerfacecolor="0.35" if markers[k] == "x" else "white", label=texts[k])
            for k in (*END_MARKERS, OFF_SCALE) if k in kinds]  # fmt: skip
