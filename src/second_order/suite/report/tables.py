"""Tables of the report, one row per group of runs (see :mod:`.grouping`), as Markdown and CSV.

* Table 1: training time (optimizer time, compile time, steps, per-step time, the
  run's protocol steps and the time extrapolated to them) beside the paper's V100 seconds.
* Table 2: final training loss (summary ``train_loss``: mean over the last epoch).
* Table 3: final test accuracy (summary ``test_acc``, shown in %).

Means are over seeds; "±" is the sample standard deviation (ddof=1) over seeds.
Every protocol fact (steps per epoch, epochs, test-set size, devices) is read from
the runs (:mod:`.runinfo`); the five paper methods always get a row (paper column).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from second_order.suite.report.curves import percent_scale
from second_order.suite.report.grouping import Group, group_runs
from second_order.suite.report.runinfo import (  # noqa: F401  (re-exported for the notebook)
    EARLY_STATUSES,
    dataset_name,
    devices,
    mean_std,
    mixed_devices,
    n_test_examples,
    protocol_steps,
    run_status,
    status_counts,
    steps_run,
    summary_float,
    train_time,
)
from second_order.suite.report.style import METHODS, method_style, ordered_methods
from second_order.suite.tracking.runs import Run

PAPER_TRAIN_TIME_S: dict[str, float] = {  # paper Table 1, one V100
    "sgd": 222,
    "newton": 21257,
    "newton_damped": 34933,
    "hessian_free": 244,
    "gauss_newton": 246,
}
DASH = "—"
NO_PROTOCOL = "†"  # footnote: the runs do not say how many steps a complete run makes
MIXED = "‡"  # footnote: optimizer time summed over different devices


# --------------------------------------------------------------------- formatting


# Markdown cells switch to scientific notation with SCI_DIGITS significant digits
# (``5.37e+06``) for magnitudes of at least SCI_LARGE or below SCI_SMALL (zero
# excepted), where fixed decimals would be unreadably long or show only zeros.
# CSV records keep every digit.
SCI_LARGE = 1e4
SCI_SMALL = 1e-3
SCI_DIGITS = 3


def _is_sci(x: float, large: bool = True) -> bool:
    """Whether ``x`` is shown in scientific notation (``large=False``: only if tiny)."""
    a = abs(x)
    return math.isfinite(x) and ((large and a >= SCI_LARGE) or 0 < a < SCI_SMALL)


def _sci(x: float) -> str:
    return f"{x:.{SCI_DIGITS - 1}e}"


def fmt_num(x: float, decimals: int, *, large: bool = True) -> str:
    """``x`` with ``decimals`` fixed decimals, in scientific notation if huge or tiny.

    ``large=False`` keeps fixed decimals however large ``x`` is (e.g. seconds).
    """
    if not math.isfinite(x):
        return DASH
    return _sci(x) if _is_sci(x, large) else f"{x:.{decimals}f}"


def fmt_mean_std(mean: float, std: float, decimals: int, *, large: bool = True) -> str:
    """``"m ± s"``, just ``"m"`` for a single seed, ``"—"`` without data.

    When the mean (or a huge std) needs scientific notation both numbers use it
    (``"5.37e+06 ± 9.06e+06"``); otherwise each is formatted by :func:`fmt_num`.
    """
    if not math.isfinite(mean):
        return DASH
    if not math.isfinite(std):
        return fmt_num(mean, decimals, large=large)
    if _is_sci(mean, large) or (large and abs(std) >= SCI_LARGE):
        return f"{_sci(mean)} ± {_sci(std)}"
    return f"{fmt_num(mean, decimals, large=large)} ± {fmt_num(std, decimals, large=large)}"


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


def _rows(groups: Sequence[Group]) -> list[tuple[str, Group | None]]:
    """Every group, plus a run-less row for each paper method without runs (paper column)."""
    present = {g.optimizer for g in groups}
    rows: list[tuple[str, Group | None]] = []
    for method in ordered_methods(set(METHODS) | present):
        rows += [(method, g) for g in groups if g.optimizer == method] or [(method, None)]
    return rows


def _base_record(method: str, group: Group | None) -> dict[str, Any]:
    runs = group.runs if group else []
    return {
        "method": method,
        "group": group.id if group else method,
        "name": group.name if group else method_style(method).name,
        "n_runs": len(runs),
        "status": status_counts(runs),
        "budget": group.budgets() if group else "",
    }


def _runs_cell(rec: dict[str, Any]) -> str:
    return f"{rec['n_runs']} ({rec['status']})" if rec["n_runs"] else "0"


def _budget_note(runs: Sequence[Run], budgets: str, consequence: str = "values are those at the run's end") -> str:
    early = [r for r in runs if run_status(r) in EARLY_STATUSES]
    if not runs:
        return "no runs"
    note = f"budget: {budgets}" if budgets else ""
    if early:
        kinds = collections.Counter(run_status(r) for r in early)
        what = ", ".join(f"{k} ({n}/{len(runs)})" for k, n in sorted(kinds.items()))
        note = "; ".join(filter(None, [note, f"ended early: {what}; {consequence}"]))
    return note


# ------------------------------------------------------------------------ table 1


def training_time_table(runs: Sequence[Run], groups: Sequence[Group] | None = None) -> Table:
    """Table 1: optimizer time, compile time, steps, per-step and extrapolated time, paper."""
    groups = group_runs(runs) if groups is None else groups
    headers = [
        "Method", "Runs", "Steps run", "Optimizer time (s)", "Compile (s)", "Per step (ms)",
        "Protocol steps", "Extrapolated to protocol (s)", "Paper, V100 (s)", "Notes",
    ]  # fmt: skip
    records = [_time_record(method, group) for method, group in _rows(groups)]
    rows = [_time_row(rec) for rec in records]
    notes = [
        "Optimizer time: wall-clock time of the optimizer steps, compilation, evaluation and logging excluded; "
        "mean ± sample std over seeds.",
        "Protocol steps: the steps a complete run makes (epochs × steps per epoch), as recorded by each run. "
        "Per step = optimizer time / steps run; **extrapolated** = per-step time × protocol steps. "
        "It is an estimate, not a measurement, for runs that ended early.",
        "Paper: training time in seconds on one NVIDIA V100 (paper Table 1).",
    ]
    if any(r["n_runs"] and not r["protocol_runs"] for r in records):
        notes.append(f"{DASH}{NO_PROTOCOL}: the runs do not record their protocol (summary protocol_steps, or "
                     "epochs × steps per epoch from config/logs), so their time is not extrapolated.")  # fmt: skip
    if any(r["mixed_device_runs"] for r in records):
        notes.append(f"{MIXED} mixed: includes runs resumed on a different device; their optimizer time adds "
                     "seconds of different machines.")  # fmt: skip
    notes += _device_notes(runs)
    return Table("table1_training_time", "Table 1: training time", headers, rows, records, notes)


def _time_record(method: str, group: Group | None) -> dict[str, Any]:
    runs = group.runs if group else []
    steps = [steps_run(r) for r in runs]
    times = [train_time(r) for r in runs]
    per_step = [t / s if s and s > 0 else math.nan for t, s in zip(times, steps)]
    protocols = [protocol_steps(r) for r in runs]
    extrapolated = [p * n if n else math.nan for p, n in zip(per_step, protocols)]
    t_m, t_s, _ = mean_std(times)
    c_m, c_s, _ = mean_std(summary_float(r, "compile_time_s") for r in runs)
    p_m, p_s, _ = mean_std(per_step)
    e_m, e_s, _ = mean_std(extrapolated)
    finite_steps = [s for s in steps if math.isfinite(s)]
    known = sorted({n for n in protocols if n})
    mixed = [r for r in runs if mixed_devices(r)]
    note = _budget_note(runs, group.budgets() if group else "", "time measured over the steps run only")
    if mixed:
        note = "; ".join(filter(None, [note, f"time mixed across devices in {len(mixed)}/{len(runs)} run(s)"]))
    if runs and 0 < len([n for n in protocols if n]) < len(runs):
        note = "; ".join(filter(None, [note, "extrapolated over the runs that record their protocol"]))
    return {
        **_base_record(method, group),
        "steps_min": float(min(finite_steps)) if finite_steps else math.nan,
        "steps_max": float(max(finite_steps)) if finite_steps else math.nan,
        "train_time_s_mean": t_m,
        "train_time_s_std": t_s,
        "compile_time_s_mean": c_m,
        "compile_time_s_std": c_s,
        "time_per_step_ms_mean": p_m * 1e3,
        "time_per_step_ms_std": p_s * 1e3,
        "protocol_steps_min": float(known[0]) if known else math.nan,
        "protocol_steps_max": float(known[-1]) if known else math.nan,
        "protocol_runs": sum(1 for n in protocols if n),
        "extrapolated_time_s_mean": e_m,
        "extrapolated_time_s_std": e_s,
        "budget_limited_runs": sum(run_status(r) == "budget" for r in runs),
        "mixed_device_runs": len(mixed),
        "paper_v100_time_s": float(PAPER_TRAIN_TIME_S.get(method, math.nan)),
        "note": note,
    }


def _range(lo: float, hi: float, thousands: bool = False) -> str:
    f = "{:,.0f}" if thousands else "{:.0f}"
    if not math.isfinite(lo):
        return DASH
    return f.format(lo) if lo == hi or not math.isfinite(hi) else f"{f.format(lo)}–{f.format(hi)}"


def _time_row(rec: dict[str, Any]) -> list[str]:
    pm = functools.partial(fmt_mean_std, large=False)  # seconds stay whole numbers
    mixed = MIXED if rec["mixed_device_runs"] else ""
    no_protocol = NO_PROTOCOL if rec["n_runs"] and not rec["protocol_runs"] else ""
    ext = rec["extrapolated_time_s_mean"]
    return [
        rec["name"],
        _runs_cell(rec),
        _range(rec["steps_min"], rec["steps_max"]),
        pm(rec["train_time_s_mean"], rec["train_time_s_std"], time_decimals(rec["train_time_s_mean"])) + mixed,
        pm(rec["compile_time_s_mean"], rec["compile_time_s_std"], time_decimals(rec["compile_time_s_mean"])),
        pm(rec["time_per_step_ms_mean"], rec["time_per_step_ms_std"], time_decimals(rec["time_per_step_ms_mean"]))
        + mixed,
        _range(rec["protocol_steps_min"], rec["protocol_steps_max"], thousands=True),
        pm(ext, rec["extrapolated_time_s_std"], time_decimals(ext)) + (mixed if math.isfinite(ext) else no_protocol),
        fmt_num(rec["paper_v100_time_s"], 0, large=False),
        rec["note"],
    ]


def _device_notes(runs: Sequence[Run]) -> list[str]:
    """Our hardware, from each run's segments (else environment.json)."""
    found = sorted({d for run in runs for d in devices(run)})
    return [f"Our hardware: {', '.join(found)}."] if found else []


# -------------------------------------------------------------------- tables 2, 3


def _metric_table(
    runs: Sequence[Run],
    groups: Sequence[Group] | None,
    *,
    name: str,
    title: str,
    column: str,
    key: str,
    scale: float,
    decimals: int,
    notes: list[str],
) -> Table:
    """A per-group mean ± std table of one summary value (tables 2 and 3)."""
    groups = group_runs(runs) if groups is None else groups
    headers = ["Method", "Runs", column, "Seeds in mean", "Paper", "Notes"]
    rows, records = [], []
    for method, group in _rows(groups):
        members = group.runs if group else []
        mean, std, n = mean_std(summary_float(r, key) * scale for r in members)
        rec = {**_base_record(method, group), "mean": mean, "std": std, "n_finite": n}
        rec["note"] = _budget_note(members, rec["budget"])
        records.append(rec)
        rows.append([rec["name"], _runs_cell(rec), fmt_mean_std(mean, std, decimals), str(n), DASH, rec["note"]])
    notes = notes + ["Mean ± sample std (ddof=1) over seeds with a finite value; the paper reports no number (—)."]
    return Table(name, title, headers, rows, records, notes)


def train_loss_table(runs: Sequence[Run], groups: Sequence[Group] | None = None) -> Table:
    """Table 2: final training loss (mean over each run's last epoch), mean ± std over seeds."""
    return _metric_table(
        runs, groups, name="table2_train_loss", title="Table 2: final training loss", column="Final train loss",
        key="train_loss", scale=1.0, decimals=4,
        notes=["Final train loss: mean per-step cross-entropy over a run's last epoch "
               "(its last, possibly partial, epoch for runs that ended early)."],
    )  # fmt: skip


def _test_set(runs: Sequence[Run]) -> str:
    """``"the 10,000 mnist test examples"`` from the runs, ``"the test set"`` if unrecorded."""
    sizes = sorted({n for n in map(n_test_examples, runs) if n})
    names = sorted({d for d in map(dataset_name, runs) if d})
    size = " / ".join(f"{n:,}" for n in sizes)
    return "the " + " ".join(filter(None, [size, " / ".join(names), "test examples" if size else "test set"]))


def accuracy_table(runs: Sequence[Run], groups: Sequence[Group] | None = None) -> Table:
    """Table 3: final test accuracy in %, mean ± std over seeds."""
    scale = percent_scale([summary_float(r, "test_acc") for r in runs])
    return _metric_table(
        runs, groups, name="table3_test_accuracy", title="Table 3: final test accuracy", column="Test accuracy (%)",
        key="test_acc", scale=scale, decimals=2,
        notes=[f"Test accuracy on {_test_set(runs)} after the last optimizer step."],
    )  # fmt: skip


TABLES: tuple[Callable[..., Table], ...] = (training_time_table, train_loss_table, accuracy_table)


def write_all_tables(runs: Sequence[Run], out_dir: Path | str) -> list[Path]:
    """Write tables 1-3 (Markdown + CSV) into ``out_dir``; returns the written paths."""
    groups = group_runs(runs)
    return [path for make in TABLES for path in make(runs, groups).write(out_dir)]
