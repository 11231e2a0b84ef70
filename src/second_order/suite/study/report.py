"""The study's report (``results/study/``), from run files only.

* ``tuning.md`` — the best parameters per method and workload, with their search ranges;
* ``time_to_target.md`` / ``.csv`` — per workload and method, over the final runs' seeds:
  seeds that reached the target, median [min–max] steps and optimizer seconds to it
  (compilation excluded, and included as AlgoPerf counts it), final validation and
  test accuracy;
* ``performance_profile.png`` — ρ(τ) for τ in [1, 64], τ = 4 marked (:mod:`.profiles`), with the
  median optimizer seconds to target per workload as the cost;
* ``loss_vs_time_<workload>.png`` — training loss against optimizer seconds;
* ``val_acc_vs_time_<workload>.png`` — the target's metric against optimizer seconds, the
  target drawn (:mod:`.plots`): where a method's line crosses it is its time to target;
* ``summary.md`` — the headline table and the answer, in numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from second_order.suite.report.figures import plot_loss_vs_time
from second_order.suite.report.loading import load_runs, warn
from second_order.suite.report.overlaps import Overlap, overlaps, timed
from second_order.suite.report.runinfo import cpus, devices, run_status, segments
from second_order.suite.report.style import save_figure
from second_order.suite.study.plan import Study, search_space
from second_order.suite.study.plots import plot_metric_vs_time, plot_profiles
from second_order.suite.study.runner import FAILED_FILE, TUNING_RESULTS, best_parameters, final_dir, tune_dir
from second_order.suite.study.targets import (
    MAXIMISE,
    TimeToTarget,
    median_and_spread,
    target_from_baselines,
    time_to_target,
)
from second_order.suite.tracking.runs import Run


class NoStudyRuns(FileNotFoundError):
    """No final run of the study under its root: there is nothing to report (and nothing is written)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__(f"no runs found under {root} (final runs go to {root / 'final'}/<workload>/<method>/)")


#: The statuses of a final run that ended for good (the runner's ``finished``): only these are scored.
ENDED = ("completed", "budget", "diverged")


def final_runs(study: Study, root: Path) -> dict[str, dict[str, list[Run]]]:
    """``{workload: {method: runs (seeds)}}`` of the final phase found on disk.

    Only ``final/<workload>/<method>/seed<s>`` for the study's seeds, and only runs that
    ended (:data:`ENDED`); a failed, running or interrupted seed, a seed the study does not
    list and anything else in the folder are left out, with a warning.
    """
    found: dict[str, dict[str, list[Run]]] = {}
    seeds = [int(s) for s in study.final["seeds"]]
    for workload in study.workloads:
        found[workload.name] = {}
        for method in study.methods:
            where = final_dir(root, workload) / method
            runs = load_runs([where]) if where.exists() else []
            kept = [r for r in runs if r.path == where / f"seed{r.seed}" and r.seed in seeds and run_status(r) in ENDED]
            for r in runs:
                if r not in kept:
                    warn(f"{r.path}: not scored (status {run_status(r)}, seed {r.seed}; the study's seeds: {seeds})")
            if kept:
                found[workload.name][method] = sorted(kept, key=lambda r: r.seed)
    return found


def _final(run: Run, key: str) -> float:
    value = run.summary.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def targets(study: Study, runs: Mapping[str, Mapping[str, Sequence[Run]]]) -> dict[str, tuple[float, str]]:
    """Per workload: (target, where it comes from): the config, else the best tuned baseline's median."""
    out: dict[str, tuple[float, str]] = {}
    for workload in study.workloads:
        if workload.target is not None:
            out[workload.name] = (float(workload.target), "config")
            continue
        # A seed without a finite result (diverged) counts as the worst, so one NaN cannot void a baseline.
        worst = -math.inf if MAXIMISE[study.target_metric] else math.inf
        medians = {
            m: float(np.median([_finite_or(_final(r, study.target_metric), worst) for r in runs[workload.name][m]]))
            for m in study.target_baselines
            if runs.get(workload.name, {}).get(m)
        }
        if any(math.isfinite(v) for v in medians.values()):
            best = target_from_baselines(list(medians.values()), study.target_metric)
            who = next(m for m, v in medians.items() if v == best)
            out[workload.name] = (best, f"median final {study.target_metric} of tuned {who}")
        else:
            warn(f"{workload.name}: no target (no tuned baseline of {list(study.target_baselines)} has a finite "
                 "median result); the workload is left out of the time-to-target tables and profiles")  # fmt: skip
    return out


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def times(
    study: Study, runs: Mapping[str, Mapping[str, Sequence[Run]]], goal: Mapping[str, tuple[float, str]]
) -> dict[str, dict[str, list[TimeToTarget]]]:
    return {
        w: {
            m: [time_to_target(r.evals, r.summary, goal[w][0], study.target_metric) for r in rs] for m, rs in ms.items()
        }
        for w, ms in runs.items()
        if w in goal
    }


def _fmt_time(values: Sequence[float], unit: str) -> str:
    median, lo, hi = median_and_spread(values)
    if not math.isfinite(median):
        return "missed"
    fmt = (lambda v: f"{v:.0f}") if unit == "steps" else (lambda v: f"{v:.2f}")
    return f"{fmt(median)} [{fmt(lo)}–{fmt(hi) if math.isfinite(hi) else '∞'}]"


def costs(ttt: Mapping[str, Mapping[str, Sequence[TimeToTarget]]], with_compile: bool = False) -> dict:
    """``{method: {workload: median seconds to target}}`` (a median over seeds that is ∞ counts as missed)."""
    out: dict[str, dict[str, float]] = {}
    for w, per in ttt.items():
        for m, ts in per.items():
            values = [t.seconds_with_compile if with_compile else t.seconds for t in ts]
            out.setdefault(m, {})[w] = median_and_spread(values)[0]
    return out


def time_table(study: Study, runs, ttt, goal) -> list[list[str]]:
    header = ["workload", "method", "family", "reached", "steps to target", "seconds to target",
              "seconds incl. compile", "final val acc", "final test acc"]  # fmt: skip
    rows = [header]
    for w, per in ttt.items():
        order = sorted(per, key=lambda m: (median_and_spread([t.seconds for t in per[m]])[0], m))
        for m in order:
            ts, rs = per[m], runs[w][m]
            rows.append(
                [w, m, study.family(m), f"{sum(t.reached for t in ts)}/{len(ts)}",
                 _fmt_time([t.steps for t in ts], "steps"), _fmt_time([t.seconds for t in ts], "s"),
                 _fmt_time([t.seconds_with_compile for t in ts], "s"),
                 f"{np.nanmedian([_final(r, 'val_acc') for r in rs]):.4f}",
                 f"{np.nanmedian([_final(r, 'test_acc') for r in rs]):.4f}"]
            )  # fmt: skip
    return rows


def markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def tuning_table(study: Study, root: Path) -> list[list[str]]:
    rows = [["workload", "method", "tuned key", "search range", "default", "best"]]
    for workload in study.workloads:
        for method in study.methods:
            space = search_space(method, study.tuning.get("keys", ()), float(study.tuning.get("spread", 10.0)))
            where = tune_dir(root, workload, method)
            best = best_parameters(where) if (where / TUNING_RESULTS).exists() else {}
            if not space:
                rows.append([workload.name, method, "—", "nothing to tune", "", ""])
            for key, (lo, hi) in space.items():
                default = (lo * hi) ** 0.5
                found = best.get(key)
                rows.append([workload.name, method, key.removeprefix("optimizer."), f"{lo:.3g}–{hi:.3g}",
                             f"{default:.3g}", f"{found:.3g}" if found is not None else "not tuned yet"])  # fmt: skip
    return rows


def _failed_section(root: Path) -> str:
    """The (workload, method) pairs the runner left out (``failed.yaml``), as a summary section."""
    path = root / FAILED_FILE
    failed = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    lines = [f"- {m} on {w}: {why}" for w, per in sorted(failed.items()) for m, why in sorted(per.items())]
    return "\n## Left out (their tuning or final runs failed)\n\n" + "\n".join(lines) + "\n" if lines else ""


def _every_run(runs: Mapping[str, Mapping[str, Sequence[Run]]]) -> list[Run]:
    return [r for per in runs.values() for rs in per.values() for r in rs]


def timed_overlaps(runs: Mapping[str, Mapping[str, Sequence[Run]]]) -> list[Overlap]:
    """The scored final runs that shared a machine at once (:mod:`..report.overlaps`), each warned about."""
    found = overlaps(_every_run(runs))
    for o in found:
        warn(f"{o.describe()}: their optimizer seconds are not comparable (the final runs must run one at a time)")
    return found


def serial_note(runs: Mapping[str, Mapping[str, Sequence[Run]]], found: Sequence[Overlap]) -> str:
    """How the final runs ran, for the summary: checked when every run has its segments' times."""
    if found:
        return f"meant to run one at a time, but {len(found)} pair(s) shared a machine at once (named at the end)"
    scored = _every_run(runs)
    if not all(timed(r) for r in scored):
        return "one at a time"
    if any(s.get("slurm_job") for r in scored for s in segments(r)):
        return "as SLURM jobs (checked from their records: none shared an allocation with another at once)"
    return "one at a time (checked from their records: no two shared a machine at once)"


def timed_on(runs: Mapping[str, Mapping[str, Sequence[Run]]]) -> dict[str, list[str]]:
    """``{device: ["<method> on <workload> seed <s>", ...]}`` of the scored final runs.

    A run resumed on another device counts under its devices joined by ``+``; a CPU run
    under its CPU model and cores too (two CPU models are two devices); runs without a
    device record (older runs) are left out.
    """
    found: dict[str, list[str]] = {}
    for w, per in runs.items():
        for m, rs in per.items():
            for r in rs:
                label = _device_label(r)
                if label:
                    found.setdefault(label, []).append(f"{m} on {w} seed {r.seed}")
    if len(found) > 1:
        warn(f"the final runs were timed on {len(found)} devices ({'; '.join(sorted(found))}): their seconds are "
             "not comparable across them (summary.md names which ran where)")  # fmt: skip
    return found


def _device_label(run: Run) -> str:
    """The run's devices; on the CPU with the CPU model and cores where the run recorded them."""
    label, on_cpus = " + ".join(devices(run)), cpus(run)
    return f"{label} ({' + '.join(on_cpus)})" if label == "cpu" and on_cpus else label


def _device_phrase(found: Mapping[str, Sequence[str]]) -> str:
    """Where the final runs were timed, for the summary's protocol sentence."""
    if not found:
        return ""
    if len(found) == 1:
        return f", timed on {next(iter(found))}"
    return f", timed on {len(found)} different devices (named at the end: their seconds are not comparable)"


def _device_section(found: Mapping[str, Sequence[str]]) -> str:
    """The final runs per device, as a summary section, when they ran on more than one."""
    if len(found) < 2:
        return ""
    lines = [f"- {device}: {', '.join(names)}" for device, names in sorted(found.items())]
    return (
        "\n## Final runs timed on different devices\n\n"
        "Seconds on one device say nothing about another: compare methods only within one device, or "
        "rerun the final phase where every run gets the same kind (e.g. one SLURM partition, "
        "`hydra.launcher.partition=...`).\n\n" + "\n".join(lines) + "\n"
    )


def _overlap_section(found: Sequence[Overlap], root: Path) -> str:
    """The final runs that ran at once on one machine, as a summary section (empty when none did)."""
    if not found:
        return ""

    def shown(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    lines = [f"- {o.describe(shown)}" for o in found]
    return (
        "\n## Timed runs that ran at once on one machine\n\n"
        "They shared its cores, so their optimizer seconds, and the times to target above, are not "
        "comparable. Delete their folders and run the final phase again, one job after another and with "
        "no other run on the machine (`scripts/study.py --phase final,report`).\n\n" + "\n".join(lines) + "\n"
    )


def write_report(study: Study, root: Path, out_dir: Path) -> list[Path]:
    """Every file of the report into ``out_dir``; returns their paths.

    Raises :class:`NoStudyRuns`, before creating or touching anything in ``out_dir``, when
    ``root`` holds no final run of the study: an empty report would replace a real one.
    """
    runs = final_runs(study, root)
    if not any(runs.values()):
        raise NoStudyRuns(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    goal = targets(study, runs)
    ttt = times(study, runs, goal)
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        (out_dir / name).write_text(content)
        written.append(out_dir / name)

    text("tuning.md", f"# Tuning: study {study.name}\n\n" + markdown(tuning_table(study, root)))
    rows = time_table(study, runs, ttt, goal)
    text("time_to_target.md", f"# Time to target: study {study.name}\n\n" + markdown(rows))
    text("time_to_target.csv", "\n".join(",".join(f'"{c}"' for c in r) for r in rows) + "\n")
    if ttt:
        kinds = {
            "optimizer seconds (compilation excluded)": costs(ttt),
            "including compilation (AlgoPerf)": costs(ttt, True),
        }
        written += save_figure(plot_profiles(kinds), out_dir, "performance_profile")
    for w, per in runs.items():
        flat = [r for rs in per.values() for r in rs]
        if flat:
            fig = plot_loss_vs_time(flat, log_time=True)
            # An axes title: constrained layout fits it under the legend that plot_loss put above
            # (a suptitle overlapped that legend and was clipped at the figure's edges).
            fig.axes[0].set_title(f"{w}: tuned methods, final runs", fontsize=8)
            written += save_figure(fig, out_dir, f"loss_vs_time_{w}")
            target = goal[w][0] if w in goal else None
            title = f"{w}: tuned methods, final runs ({study.target_metric}, the metric the target is set on)"
            fig = plot_metric_vs_time(per, target, study.target_metric, title)
            written += save_figure(fig, out_dir, f"{study.target_metric}_vs_time_{w}")
    from second_order.suite.study.summary import summary_markdown

    shared, where = timed_overlaps(runs), timed_on(runs)
    how = serial_note(runs, shared) + _device_phrase(where)
    text("summary.md", summary_markdown(study, runs, ttt, goal, how) + _failed_section(root)
         + _overlap_section(shared, root) + _device_section(where))  # fmt: skip
    return written
