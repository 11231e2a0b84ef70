"""Tables of the report, aggregated over seeds, written as Markdown and CSV.

* Table 1: training time (optimizer time, compile time, steps, per-step time, an
  extrapolated full-protocol time) beside the paper's V100 seconds.
* Table 2: final training loss (summary ``train_loss``: mean over the last epoch).
* Table 3: final test accuracy (summary ``test_acc``, shown in %).

Means are over seeds; "±" is the sample standard deviation (ddof=1) over seeds.
This module also holds the small run helpers shared with :mod:`.figures`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from second_order.suite.report.style import METHODS, method_style, ordered_methods
from second_order.suite.tracking.runs import ENV_FILE, Run

FULL_PROTOCOL_STEPS = 6566  # 7 epochs x 938 steps of batch 64 on MNIST's 60k images
PAPER_TRAIN_TIME_S: dict[str, float] = {  # paper Table 1, one V100
    "sgd": 222,
    "newton": 21257,
    "newton_damped": 34933,
    "hessian_free": 244,
    "gauss_newton": 246,
}
DASH = "—"
EARLY_STATUSES = ("budget", "diverged", "interrupted")


# --------------------------------------------------------------------------- runs


def run_status(run: Run) -> str:
    """``completed | diverged | interrupted | budget`` (``diverged`` wins if flagged)."""
    status = str(run.summary.get("status") or "unknown")
    return "diverged" if run.summary.get("diverged") else status


def group_by_method(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs keyed by optimizer name, in the paper's method order, seeds sorted."""
    groups: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs:
        groups[run.optimizer].append(run)
    return {m: sorted(groups[m], key=lambda r: (r.seed, str(r.path))) for m in ordered_methods(groups)}


def summary_float(run: Run, key: str) -> float:
    """A summary value as float, NaN when missing / null / not a number."""
    try:
        value = float(run.summary.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return value


def steps_run(run: Run) -> float:
    """Optimizer steps the run made (summary ``steps``, else the largest logged step)."""
    steps = summary_float(run, "steps")
    if math.isfinite(steps):
        return steps
    logged = run.steps.get("step", np.array([]))
    logged = logged[np.isfinite(logged)]
    return float(logged.max()) if logged.size else math.nan


def train_time(run: Run) -> float:
    """Optimizer seconds (summary ``train_time_s``, else the last logged ``time_s``)."""
    t = summary_float(run, "train_time_s")
    if math.isfinite(t):
        return t
    logged = run.steps.get("time_s", np.array([]))
    logged = logged[np.isfinite(logged)]
    return float(logged[-1]) if logged.size else math.nan


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN below two values) and count of the finite values."""
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return float(np.mean(x)), std, int(x.size)


def status_counts(runs: Sequence[Run]) -> str:
    """E.g. ``"3 completed"`` or ``"1 budget, 1 diverged"``."""
    counts = collections.Counter(run_status(r) for r in runs)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"


# --------------------------------------------------------------------- formatting


def fmt_num(x: float, decimals: int) -> str:
    return DASH if not math.isfinite(x) else f"{x:.{decimals}f}"


def fmt_mean_std(mean: float, std: float, decimals: int) -> str:
    """``"m ± s"``, just ``"m"`` for a single seed, ``"—"`` without data."""
    if not math.isfinite(mean):
        return DASH
    if not math.isfinite(std):
        return fmt_num(mean, decimals)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def time_decimals(seconds: float) -> int:
    """Decimals that keep about three significant digits for a duration."""
    if not math.isfinite(seconds) or seconds >= 100:
        return 0
    return 1 if seconds >= 10 else 2 if seconds >= 0.1 else 3


# -------------------------------------------------------------------------- table


@dataclasses.dataclass
class Table:
    """One table: Markdown cells for reading, CSV records (raw numbers) for tools."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    records: list[dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path | str) -> list[Path]:
        """Write ``<name>.md`` and ``<name>.csv``; returns both paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, csv_path = out_dir / f"{self.name}.md", out_dir / f"{self.name}.csv"
        md.write_text(self.markdown())
        fields = list(self.records[0]) if self.records else ["method"]
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in self.records)
        return [md, csv_path]


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return v


def _table_methods(groups: dict[str, list[Run]]) -> list[str]:
    """All five paper methods (so the paper column is always complete) plus any others."""
    return ordered_methods(set(METHODS) | set(groups))


def _budget_note(runs: Sequence[Run], consequence: str = "values are those at the run's end") -> str:
    early = [r for r in runs if run_status(r) in EARLY_STATUSES]
    if not runs:
        return "no runs"
    if not early:
        return ""
    kinds = collections.Counter(run_status(r) for r in early)
    what = ", ".join(f"{k} ({n}/{len(runs)})" for k, n in sorted(kinds.items()))
    return f"ended early: {what}; {consequence}"


# ------------------------------------------------------------------------ table 1


def training_time_table(runs: Sequence[Run], full_steps: int = FULL_PROTOCOL_STEPS) -> Table:
    """Table 1: optimizer time, compile time, steps, per-step and extrapolated time, paper."""
    groups = group_by_method(runs)
    headers = [
        "Method", "Runs", "Steps run", "Optimizer time (s)", "Compile (s)", "Per step (ms)",
        f"Extrapolated to {full_steps} steps (s)", "Paper, V100 (s)", "Notes",
    ]  # fmt: skip
    rows, records = [], []
    for method in _table_methods(groups):
        rec = _time_record(method, groups.get(method, []), full_steps)
        records.append(rec)
        rows.append(_time_row(rec))
    notes = [
        "Optimizer time: wall-clock time of the optimizer steps, compilation, evaluation and logging excluded; "
        "mean ± sample std over seeds.",
        f"Per step = optimizer time / steps run; **extrapolated** = per-step time × {full_steps} "
        "(the full 7-epoch protocol). It is an estimate, not a measurement, for runs that ended early.",
        "Paper: training time in seconds on one NVIDIA V100 (paper Table 1).",
    ]
    notes += _device_notes(runs)
    return Table("table1_training_time", "Table 1: training time", headers, rows, records, notes)


def _time_record(method: str, runs: Sequence[Run], full_steps: int) -> dict[str, Any]:
    st = method_style(method)
    steps = [steps_run(r) for r in runs]
    times = [train_time(r) for r in runs]
    per_step = [t / s if s and s > 0 else math.nan for t, s in zip(times, steps)]
    t_m, t_s, _ = mean_std(times)
    c_m, c_s, _ = mean_std(summary_float(r, "compile_time_s") for r in runs)
    p_m, p_s, _ = mean_std(per_step)
    finite_steps = [s for s in steps if math.isfinite(s)]
    return {
        "method": method,
        "name": st.name,
        "n_runs": len(runs),
        "status": status_counts(runs),
        "steps_min": float(min(finite_steps)) if finite_steps else math.nan,
        "steps_max": float(max(finite_steps)) if finite_steps else math.nan,
        "train_time_s_mean": t_m,
        "train_time_s_std": t_s,
        "compile_time_s_mean": c_m,
        "compile_time_s_std": c_s,
        "time_per_step_ms_mean": p_m * 1e3,
        "time_per_step_ms_std": p_s * 1e3,
        "extrapolated_time_s_mean": p_m * full_steps,
        "extrapolated_time_s_std": p_s * full_steps,
        "budget_limited_runs": sum(run_status(r) == "budget" for r in runs),
        "paper_v100_time_s": float(PAPER_TRAIN_TIME_S.get(method, math.nan)),
        "note": _budget_note(runs, "time measured over the steps run only"),
    }


def _time_row(rec: dict[str, Any]) -> list[str]:
    lo, hi = rec["steps_min"], rec["steps_max"]
    steps = fmt_num(lo, 0) if lo == hi or not math.isfinite(hi) else f"{lo:.0f}–{hi:.0f}"
    pm = fmt_mean_std
    return [
        rec["name"],
        f"{rec['n_runs']} ({rec['status']})" if rec["n_runs"] else "0",
        steps,
        pm(rec["train_time_s_mean"], rec["train_time_s_std"], time_decimals(rec["train_time_s_mean"])),
        pm(rec["compile_time_s_mean"], rec["compile_time_s_std"], time_decimals(rec["compile_time_s_mean"])),
        pm(rec["time_per_step_ms_mean"], rec["time_per_step_ms_std"], time_decimals(rec["time_per_step_ms_mean"])),
        pm(rec["extrapolated_time_s_mean"], rec["extrapolated_time_s_std"], time_decimals(rec["extrapolated_time_s_mean"])),
        fmt_num(rec["paper_v100_time_s"], 0),
        rec["note"],
    ]


def _device_notes(runs: Sequence[Run]) -> list[str]:
    """Our hardware, from each run's environment.json (``device_kind``, ``backend``)."""
    devices = set()
    for run in runs:
        try:
            env = json.loads((run.path / ENV_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(env, dict) and env.get("device_kind"):
            kind, backend = str(env["device_kind"]), str(env.get("backend") or "")
            devices.add(kind if backend.lower() in ("", kind.lower()) else f"{kind} ({backend})")
    return [f"Our hardware: {', '.join(sorted(devices))}."] if devices else []


# -------------------------------------------------------------------- tables 2, 3


def _metric_table(
    runs: Sequence[Run],
    *,
    name: str,
    title: str,
    column: str,
    key: str,
    scale: float,
    decimals: int,
    notes: list[str],
) -> Table:
    """A per-method mean ± std table of one summary value (tables 2 and 3)."""
    groups = group_by_method(runs)
    headers = ["Method", "Runs", column, "Seeds in mean", "Paper", "Notes"]
    rows, records = [], []
    for method in _table_methods(groups):
        group = groups.get(method, [])
        mean, std, n = mean_std(summary_float(r, key) * scale for r in group)
        note = _budget_note(group)
        records.append(
            {"method": method, "name": method_style(method).name, "n_runs": len(group),
             "status": status_counts(group), "mean": mean, "std": std, "n_finite": n, "note": note}
        )  # fmt: skip
        runs_cell = f"{len(group)} ({status_counts(group)})" if group else "0"
        rows.append([method_style(method).name, runs_cell, fmt_mean_std(mean, std, decimals),
                     str(n), DASH, note])  # fmt: skip
    notes = notes + ["Mean ± sample std (ddof=1) over seeds with a finite value; the paper reports no number (—)."]
    return Table(name, title, headers, rows, records, notes)


def train_loss_table(runs: Sequence[Run]) -> Table:
    """Table 2: final training loss (mean over each run's last epoch), mean ± std over seeds."""
    return _metric_table(
        runs, name="table2_train_loss", title="Table 2: final training loss", column="Final train loss",
        key="train_loss", scale=1.0, decimals=4,
        notes=["Final train loss: mean per-step cross-entropy over a run's last epoch "
               "(its last, possibly partial, epoch for runs that ended early)."],
    )  # fmt: skip


def accuracy_table(runs: Sequence[Run]) -> Table:
    """Table 3: final test accuracy in %, mean ± std over seeds."""
    scale = percent_scale(summary_float(r, "test_acc") for r in runs)
    return _metric_table(
        runs, name="table3_test_accuracy", title="Table 3: final test accuracy", column="Test accuracy (%)",
        key="test_acc", scale=scale, decimals=2,
        notes=["Test accuracy on the 10k MNIST test images after the last optimizer step."],
    )  # fmt: skip


def percent_scale(accuracies: Iterable[float]) -> float:
    """100 when accuracies are fractions in [0, 1], else 1 (already in %)."""
    return 100.0 if all(a <= 1.0 for a in accuracies if math.isfinite(a)) else 1.0


TABLES: tuple[Callable[[Sequence[Run]], Table], ...] = (training_time_table, train_loss_table, accuracy_table)


def write_all_tables(runs: Sequence[Run], out_dir: Path | str) -> list[Path]:
    """Write tables 1-3 (Markdown + CSV) into ``out_dir``; returns the written paths."""
    return [path for make in TABLES for path in make(runs).write(out_dir)]
