"""A W&B workspace of the suite's runs, as code (``wandb-workspaces``).

The panels read the metric layout of :mod:`~second_order.suite.tracking.wandb_logger`:

* section ``paper figures``, always: train loss against ``step`` and against ``time_s``
  (optimizer seconds), test accuracy (``eval/acc``) per ``epoch``, for every run shown;
* one section per preset experiment beyond the paper (``beyond_paper``, ``baselines``,
  ``curvature``: :data:`PRESETS`) with the diagnostics that experiment is about.

Which runs: without chosen experiments, every run of the project (any ``experiment_name``:
``default``, ``fig09_11_gauss_newton``, a study's, ...) and every preset section; with
chosen experiments (any names), the runs whose W&B group (the run's ``experiment_name``)
is one of them, and the sections of the presets among them.  The runs are grouped by
that group, then by ``config.optimizer.name``; the panels follow that grouping, so every
curve is one method of one experiment drawn as the mean over its seeds with a ±1
standard deviation band.  Building the workspace and its spec needs no network; only
:func:`save_workspace` talks to W&B.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

PAPER_SECTION = "paper figures"
#: The experiments with their own documented panels (configs/experiment/<name>.yaml); any other
#: experiment name is shown too, with the paper's figures.
PRESETS = ("paper", "beyond_paper", "baselines", "curvature")
GROUP = "Group"  # the run's W&B group: its experiment_name (a run attribute, no config ".value" lookup)
OPTIMIZER_KEY = "optimizer.name"  # config key; also each run's first tag
MAX_GROUPS = 50  # curves per panel; W&B's default of 10 would hide methods (the four presets have 23)


@dataclasses.dataclass(frozen=True)
class Chart:
    """One line plot: ``y`` against ``x``, titled ``title``."""

    y: str
    x: str
    title: str
    log_y: bool = False


PAPER_FIGURES = (
    Chart("train/loss", "step", "train loss vs step", log_y=True),
    Chart("train/loss", "time_s", "train loss vs optimizer seconds", log_y=True),
    Chart("eval/acc", "epoch", "test accuracy per epoch"),
)

EXPERIMENT_CHARTS: dict[str, tuple[Chart, ...]] = {
    "beyond_paper": (
        Chart("opt/damping", "step", "Levenberg-Marquardt damping λ", log_y=True),
        Chart("opt/rho", "step", "reduction ratio ρ (actual / predicted)"),
        Chart("opt/radius", "step", "trust-region radius", log_y=True),
        Chart("opt/min_eigenvalue", "step", "smallest Ritz value (saddle-free Newton)"),
    ),
    "baselines": (
        Chart("eval/loss", "epoch", "test loss per epoch", log_y=True),
        Chart("opt/grad_norm", "step", "gradient norm", log_y=True),
        Chart("opt/step_norm", "step", "step norm", log_y=True),
    ),
    "curvature": (
        Chart("curvature/hessian_top1", "step", "Hessian λ_max", log_y=True),
        Chart("curvature/hessian_bottom1", "step", "Hessian λ_min"),
        Chart("curvature/hessian_neg_mass", "step", "Hessian negative mass (%)"),
        Chart("curvature/gauss_newton_top1", "step", "Gauss-Newton λ_max", log_y=True),
    ),
}


def chosen(experiments: Sequence[str] | None) -> list[str] | None:
    """The experiment names to show (``None``: every run of the project), checked, duplicates dropped."""
    if experiments is None:
        return None
    if isinstance(experiments, str):
        experiments = [experiments]
    names = list(dict.fromkeys(experiments))
    bad = [e for e in names if not isinstance(e, str) or not e.strip()]
    if bad or not names:
        raise ValueError(
            f"experiments must be experiment names (non-empty strings), or None for every run, got {list(experiments)}"
        )
    return names


def sections_for(experiments: Sequence[str] | None = None) -> list[tuple[str, tuple[Chart, ...]]]:
    """(section name, charts) in workspace order: the paper's figures, then each preset shown.

    ``None`` (every run) shows every preset's section; otherwise those of the chosen
    experiments that are presets (other names get the paper's figures only).
    """
    names = chosen(experiments)
    return [(PAPER_SECTION, PAPER_FIGURES)] + [
        (e, EXPERIMENT_CHARTS[e]) for e in PRESETS[1:] if names is None or e in names
    ]


def line_plot(chart: Chart) -> wr.LinePlot:
    """A ``wandb_workspaces`` line plot of ``chart``: grouped runs as mean ± std."""
    import wandb_workspaces.reports.v2 as wr

    return wr.LinePlot(
        title=chart.title,
        x=chart.x,
        y=[chart.y],
        title_x=chart.x,
        title_y=chart.y,
        log_y=chart.log_y or None,
        aggregate=True,  # draw groups of the runs table, not single runs
        groupby_aggfunc="mean",
        groupby_rangefunc="stddev",
    )


def build_workspace(
    entity: str, project: str, experiments: Sequence[str] | None = None, name: str = "second-order"
) -> ws.Workspace:
    """The workspace for ``entity/project``: the runs of ``experiments`` (any names), or every run (``None``)."""
    import wandb_workspaces.workspaces as ws

    names = chosen(experiments)
    sections = [
        ws.Section(name=title, panels=[line_plot(c) for c in charts], is_open=True)
        for title, charts in sections_for(names)
    ]
    runset = ws.RunsetSettings(
        filters=[] if names is None else [ws.Metric(GROUP).isin(names)],
        groupby=[ws.Metric(GROUP), ws.Config(OPTIMIZER_KEY)],
    )
    settings = ws.WorkspaceSettings(x_axis="step", smoothing_type="none", max_runs=MAX_GROUPS)
    return ws.Workspace(
        entity=entity, project=project, name=name, sections=sections, settings=settings, runset_settings=runset
    )


def workspace_spec(workspace: ws.Workspace) -> dict[str, Any]:
    """The view :meth:`Workspace.save` would upload (entity, project, name, spec), as plain JSON data."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def save_workspace(workspace: ws.Workspace) -> str:
    """Publish ``workspace`` as a new saved view (needs ``wandb login``); its URL."""
    workspace.save()
    return str(workspace.url)
