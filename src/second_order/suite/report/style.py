"""One look for every figure: method colours, labels, line styles and paper rcParams.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas,
so nothing here touches pyplot or the global backend (safe to import in notebooks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIG_WIDTH_IN = 3.4  # one column of a two-column paper
FIG_HEIGHT_IN = 2.4
PNG_DPI = 200
FIGURE_FORMATS = ("png", "pdf")


@dataclasses.dataclass(frozen=True)
class MethodStyle:
    """How one optimizer (or one group of its runs) is drawn and named."""

    label: str  # short legend label
    name: str  # full name, used in tables and captions
    color: str
    linestyle: Any
    marker: str


# Okabe-Ito colour-blind-safe palette for the paper's five; every method has its own colour and
# its own line style (tested in tests/test_report.py), so greyscale prints and similar hues stay apart.
# Hyper-parameters are not here: captions and labels read them from each run's config.
STYLES: dict[str, MethodStyle] = {
    "sgd": MethodStyle("SGD", "SGD", "#0072B2", "-", "o"),
    "newton": MethodStyle("Newton", "Newton", "#D55E00", "--", "s"),
    "newton_damped": MethodStyle("Damped Newton", "Damped Newton", "#E69F00", "-.", "D"),
    "hessian_free": MethodStyle("HF Newton", "Hessian-free Newton", "#009E73", (0, (5, 1.5)), "^"),
    "gauss_newton": MethodStyle("HF Gauss-Newton", "Hessian-free Gauss-Newton", "#CC79A7", (0, (1, 1)), "v"),
}
METHODS: tuple[str, ...] = tuple(STYLES)  # canonical order of the paper
# Presets of this suite beyond the paper's five (not expected in every run set).
EXTRA_STYLES: dict[str, MethodStyle] = {
    "newton_paper_precision": MethodStyle(
        "Newton, paper precision", "Newton in the paper's precision (first step float32, then float64)",
        "#000000", (0, (3, 1, 1, 1)), "x"),
    # experiment=beyond_paper: each a darker or new hue beside the paper method it extends
    "hessian_free_lm": MethodStyle("HF Newton + LM", "Hessian-free Newton, Levenberg-Marquardt damping",
                                   "#00604A", (0, (5, 1, 1, 1, 1, 1)), "^"),
    "gauss_newton_lm": MethodStyle("HF Gauss-Newton + LM", "Hessian-free Gauss-Newton, Levenberg-Marquardt damping",
                                   "#8E3B73", (0, (3, 1, 1, 1, 1, 1)), "v"),
    "trust_region_cg": MethodStyle("TR Newton (Steihaug CG)", "Trust-region Newton, Steihaug-Toint CG",
                                   "#56B4E9", (0, (4, 1, 1, 1)), "P"),
    "newton_lanczos": MethodStyle("TR Newton-Lanczos", "Trust-region Newton-Lanczos (GLTR)",
                                  "#8C564B", (0, (6, 2)), "X"),
    "saddle_free_newton": MethodStyle("Saddle-free Newton", "Saddle-free Newton (Krylov, absolute eigenvalues)",
                                      "#9467BD", (0, (1, 1, 3, 1)), "*"),
    "online_parabola": MethodStyle("Online parabola", "SGD with an online parabola model",
                                   "#7F7F7F", (0, (2, 1)), "h"),
    # experiment=baselines: the methods the field compares against
    "adam": MethodStyle("Adam", "Adam", "#17BECF", (0, (8, 2, 2, 2)), "o"),
    "sophia": MethodStyle("Sophia", "Sophia (optax.contrib)", "#BCBD22", (0, (5, 2)), "s"),
    "adahessian": MethodStyle("AdaHessian", "AdaHessian", "#D62728", (0, (3, 2, 1, 2)), "D"),
    "shampoo": MethodStyle("Shampoo", "Shampoo (Adam graft)", "#1F3A93", (0, (1, 2, 4, 2)), "^"),
    "kfac": MethodStyle("K-FAC", "K-FAC (Dense layers)", "#A6761D", (0, (4, 1, 1, 1, 1, 1, 1, 1)), "v"),
}  # fmt: skip

# Optimizers the paper does not have: colours none of the five above use (stable per name).
_FALLBACK_COLORS = ("#56B4E9", "#8C564B", "#000000", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#D62728")
_FALLBACK_LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", (0, (3, 1, 1, 1)))

PAPER_RC: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": "0.85",
    "legend.handlelength": 2.2,
    "legend.columnspacing": 1.0,
    "legend.handletextpad": 0.5,
    "legend.borderaxespad": 0.4,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 3,
    "ytick.major.size": 3,
    "pdf.fonttype": 42,  # embed TrueType: editable, accepted by publishers
    "ps.fonttype": 42,
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
}

F = TypeVar("F", bound=Callable[..., Any])


def method_style(name: str) -> MethodStyle:
    """Style of a method; other optimizer names get a fallback style fixed by the name."""
    if name in STYLES:
        return STYLES[name]
    if name in EXTRA_STYLES:
        return EXTRA_STYLES[name]
    h = zlib.crc32(name.encode())
    color = _FALLBACK_COLORS[h % len(_FALLBACK_COLORS)]
    linestyle = _FALLBACK_LINESTYLES[(h // len(_FALLBACK_COLORS)) % len(_FALLBACK_LINESTYLES)]
    return MethodStyle(name, name, color, linestyle, "o")


def ordered_methods(names: Iterable[str]) -> list[str]:
    """Names in the paper's order, then this suite's presets, unknown ones after them alphabetically."""
    names = set(names)
    known = [*METHODS, *EXTRA_STYLES]
    return [m for m in known if m in names] + sorted(names - set(known))


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Temporarily apply :data:`PAPER_RC` (fonts >= 8 pt, light grid, no top/right spines)."""
    with matplotlib.rc_context(PAPER_RC):  # type: ignore[arg-type]  # stubs list rc keys as Literals
        yield


def with_paper_style(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`paper_style`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with paper_style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@with_paper_style
def new_figure(height: float = FIG_HEIGHT_IN, width: float = FIG_WIDTH_IN) -> Figure:
    """A column-width figure with constrained layout on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@with_paper_style
def save_figure(fig: Figure, out_dir: Path | str, name: str) -> list[Path]:
    """Write ``name.png`` (200 dpi) and ``name.pdf`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FIGURE_FORMATS:
        path = out_dir / f"{name}.{ext}"
        meta = {"CreationDate": None} if ext == "pdf" else {}  # reproducible PDFs
        fig.savefig(path, dpi=PNG_DPI, metadata=meta)
        paths.append(path)
    return paths
