"""A W&B workspace of the suite's runs, as code (``wandb-workspaces``).

The panels read the metric layout of :mod:`~second_order.suite.tracking.wandb_logger`:

* section ``paper figures``: train loss against ``step`` and against ``time_s``
  (optimizer seconds), test accuracy (``eval/acc``) per ``epoch``;
* one section per experiment beyond the paper (``beyond_paper``, ``baselines``,
  ``curvature``) with the diagnostics that experiment is about.

The run selector keeps the runs whose W&B group (the run's ``experiment_name``) is one of
the chosen experiments and groups them by that group, then by ``config.optimizer.name``; the
panels follow that grouping, so every curve is one method of one experiment drawn as
the mean over its seeds with a ±1 standard deviation band.  Building the workspace
and its spec needs no network; only :func:`save_workspace` talks to W&B.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

PAPER_SECTION = "paper figures"
EXPERIMENTS = ("paper", "beyond_paper", "baselines", "curvature")
GROUP = "Group"  # the run's W&B group: its experiment_name (a run attribute, no config ".value" lookup)
OPTIMIZER_KEY = "optimizer.name"  # config key; also each run's first tag
MAX_GROUPS = 50  # curves per panel; W&B's default of 10 would hide methods (the four experiments have 23)


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


def sections_for(experiments: Sequence[str]) -> list[tuple[str, tuple[Chart, ...]]]:
    """(section name, charts) in workspace order: the paper's figures, then each chosen new experiment."""
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown or not experiments:
        raise ValueError(f"experiments must be a non-empty subset of {EXPERIMENTS}, got {list(experiments)}")
    return [(PAPER_SECTION, PAPER_FIGURES)] + [(e, EXPERIMENT_CHARTS[e]) for e in EXPERIMENTS[1:] if e in experiments]


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
    entity: str, project: str, experiments: Sequence[str] = EXPERIMENTS, name: str = "second-order"
) -> ws.Workspace:
    """The workspace for ``entity/project``, showing the runs of ``experiments``."""
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=title, panels=[line_plot(c) for c in charts], is_open=True)
        for title, charts in sections_for(experiments)
    ]
    runset = ws.RunsetSettings(
        filters=[ws.Metric(GROUP).isin(list(experiments))],
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
