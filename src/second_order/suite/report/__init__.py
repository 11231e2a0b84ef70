"""Figures and tables of the report, drawn only from run directories (never trains).

:mod:`.loading` reads run directories (skipping bad runs and torn rows with a
warning); :mod:`.runinfo` reads each run's protocol facts from its own files;
:mod:`.grouping` puts seeds of one experiment (same optimizer and config) together
and names them; :mod:`.style` fixes colours and the paper rcParams; :mod:`.curves`
aggregates seeds; :mod:`.figures` draws loss-vs-step, loss-vs-time,
accuracy-vs-epoch and the overview, :mod:`.captions` writes their captions;
:mod:`.tables` writes tables 1-3 as Markdown and CSV.
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
from second_order.suite.report.grouping import BUDGET_KEYS, IGNORED_KEYS, Group, group_runs
from second_order.suite.report.loading import ReportWarning, load_runs
from second_order.suite.report.style import METHODS, STYLES, method_style
from second_order.suite.report.tables import write_all_tables

__all__ = [
    "BUDGET_KEYS",
    "FIGURES",
    "IGNORED_KEYS",
    "METHODS",
    "STYLES",
    "Group",
    "MissingMethodWarning",
    "ReportWarning",
    "group_runs",
    "load_runs",
    "make_all_figures",
    "method_style",
    "plot_accuracy_vs_epoch",
    "plot_loss_vs_step",
    "plot_loss_vs_time",
    "plot_overview",
    "write_all_tables",
]
