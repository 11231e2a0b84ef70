"""Figures and tables of the report, drawn only from run directories (never trains).

:mod:`.style` fixes one colour, label and line style per optimizer and the paper
rcParams; :mod:`.figures` draws loss-vs-step, loss-vs-time, accuracy-vs-epoch and
the overview; :mod:`.tables` writes tables 1-3 as Markdown and CSV.
``scripts/make_figures.py`` is the command-line entry point.
"""

from second_order.suite.report.figures import (
    FIGURES,
    MissingMethodWarning,
    make_all_figures,
    plot_accuracy_vs_epoch,
    plot_loss_vs_step,
    plot_loss_vs_time,
    plot_overview,
)
from second_order.suite.report.style import METHODS, STYLES, method_style
from second_order.suite.report.tables import write_all_tables

__all__ = [
    "FIGURES",
    "METHODS",
    "STYLES",
    "MissingMethodWarning",
    "make_all_figures",
    "method_style",
    "plot_accuracy_vs_epoch",
    "plot_loss_vs_step",
    "plot_loss_vs_time",
    "plot_overview",
    "write_all_tables",
]
