"""Figure captions written from the runs themselves: methods and settings from each
group's config, dataset / model / batch / epochs from the runs' summaries (or configs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from second_order.suite.report.grouping import Group
from second_order.suite.report.runinfo import (
    batch_size,
    configured_epochs,
    dataset_name,
    devices,
    mixed_devices,
    model_description,
    run_status,
    status_counts,
)
from second_order.suite.report.style import method_style
from second_order.suite.tracking.runs import Run

if TYPE_CHECKING:
    from second_order.suite.report.specs import FigureSpec


def _distinct(runs: Sequence[Run], fact: Callable[[Run], object]) -> list[str]:
    values = {fact(r) for r in runs}
    return sorted(str(v) for v in values if v is not None)


def protocol_line(runs: Sequence[Run]) -> str:
    """E.g. ``"mnist, MLP 784-10-10, batch 64, 7 epochs"``; several values joined by " / ".

    ``"7 epochs configured"`` unless every run completed them: a budget-limited, interrupted or
    diverged run stopped earlier (the caption's "Runs:" part says how each ended)."""
    all_completed = bool(runs) and all(run_status(r) == "completed" for r in runs)
    epochs = "{} epochs" if all_completed else "{} epochs configured"
    parts = []
    for fact, fmt in ((dataset_name, "{}"), (model_description, "{}"), (batch_size, "batch {}"),
                      (configured_epochs, epochs)):  # fmt: skip
        values = _distinct(runs, fact)
        if values:
            parts.append(fmt.format(" / ".join(values)))
    return ", ".join(parts) or "data set and model not recorded by the runs"


def group_phrase(group: Group) -> str:
    """``"Hessian-free Newton (“HF Newton”; learning rate 0.5, damping 32)"``, settings from the config."""
    name = method_style(group.optimizer).name
    short = f"“{group.label}”; " if group.label != name else ""
    return f"{name} ({short}{group.settings()})"


def runs_phrase(groups: Sequence[Group]) -> str:
    """``"SGD: 3 completed; HF Newton: 2 budget (max steps 200)"``."""
    parts = []
    for g in groups:
        budgets = g.budgets()
        parts.append(f"{g.label}: {status_counts(g.runs)}" + (f" ({budgets})" if budgets else ""))
    return "; ".join(parts)


def mixed_device_runs(groups: Sequence[Group]) -> list[Run]:
    """Runs whose segments ran on different devices (left out of time axes)."""
    return [r for g in groups for r in g.runs if mixed_devices(r)]


def caption(
    spec: FigureSpec, groups: Sequence[Group], *, smooth: int = 50, log_loss: bool = False, band: str = "std"
) -> str:
    """A paper-style caption: what is plotted, the runs behind it, how seeds were aggregated."""
    names = [group_phrase(g) for g in groups] or ["no runs"]
    who = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    runs = [r for g in groups for r in g.runs]
    spread = "±1 sample std" if band == "std" else "min–max range"
    parts = {
        "step": "Training loss against optimizer step",
        "time": "Training loss against wall-clock optimizer time in seconds (compilation, evaluation and "
        "logging excluded; each step placed at its mean time over seeds"
        + ("; log time axis" if spec.log_time else "") + ")",
        "epoch": "Test accuracy (%) after each epoch (a run stopped mid-epoch is evaluated at the fraction of "
        "an epoch it reached)",
    }  # fmt: skip
    text = f"{parts[spec.kind]}: {who}; {protocol_line(runs)}. Runs: {runs_phrase(groups) or 'none'}."
    if spec.kind != "epoch":
        text += (f" Per-step loss smoothed with a {smooth}-step trailing moving average." if smooth > 1
                 else " Raw per-step loss.") + (" Log loss axis." if log_loss else "")  # fmt: skip
    if spec.kind == "time":
        for run in mixed_device_runs(groups):
            text += f" Left out: {run.path.name} (trained on {' + '.join(devices(run))}; times not comparable)."
    if spec.loss_cap is not None:
        text += (f" Log loss axis cut at {spec.loss_cap:g}x the initial loss: a line above it (a diverging run) "
                 "leaves the axis, and its end sits on the top edge as ^.")  # fmt: skip
    if spec.kind == "step":
        text += (" The step axis is logarithmic when a line ends before 5 % of the longest (a budget-limited "
                 "run beside full ones).")  # fmt: skip
    if spec.kind != "epoch":
        text += (" On a log loss axis (chosen whenever a loss grows tenfold) the moving average, the mean and "
                 "the std are of log L (geometric).")  # fmt: skip
    text += (f" Line: mean over the seeds that reached that point; band: {spread} over seeds (none for a single "
             "seed; an error bar for a single point). End markers (in the legend): o budget end, the run's "
             "step/time budget ended; s interrupted; x diverged, last finite value of a diverged run; ^ an end "
             "above the capped loss axis.")  # fmt: skip
    if spec.slide is not None:
        text += f" Reproduces slide {spec.slide} of the paper."
    return text
