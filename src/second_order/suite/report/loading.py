"""Load run directories for the report without letting one bad run stop the build.

Every problem becomes one :class:`ReportWarning` naming the file, and the build goes on:

* summary.json or config.yaml that cannot be parsed, or a seed that is not an
  integer (a failed job): the run is **skipped**;
* a CSV row with another number of fields than the header, or a last line cut off
  mid-write (no final newline, or a field that is not a number): the **row** is skipped;
* steps (in steps.csv and eval.csv) that are not unique and strictly increasing: the
  run is **kept after de-duplication**: the last row logged for each step wins
  (a resumed run re-logs the steps after its checkpoint), rows sorted by step.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from second_order.suite.tracking.runs import CONFIG_FILE, CURVATURE_FILE, EVAL_FILE, STEPS_FILE, SUMMARY_FILE, Run


class ReportWarning(UserWarning):
    """A problem with the input runs; printed on one line, the build goes on."""


def warn(message: str) -> None:
    warnings.warn(message, ReportWarning, stacklevel=2)


def _number(text: str) -> float | None:
    """A CSV cell as float (NaN for a logged ``None`` / empty cell); None when malformed."""
    if text.strip() in ("", "None", "null"):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return None


def read_table_checked(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV log as float arrays, skipping torn rows (warns naming ``path``)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        warn(f"{path}: unreadable ({type(err).__name__}); its rows are ignored")
        return {}
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    kept, torn = [], []
    for i, row in enumerate(body):
        if not row:
            continue
        last = i == len(body) - 1
        cut = last and not text.endswith(("\n", "\r"))
        values = [_number(v) for v in row]
        if len(row) != len(header) or cut or (last and None in values):
            torn.append(i + 2)  # 1-based line number in the file
            continue
        kept.append([np.nan if v is None else v for v in values])
    if torn:
        lines = ", ".join(map(str, torn[:5])) + (" ..." if len(torn) > 5 else "")
        warn(f"{path}: skipped {len(torn)} torn or malformed row(s) (line {lines})")
    data = np.array(kept, dtype=np.float64).reshape(len(kept), len(header))
    return {name: data[:, j] for j, name in enumerate(header)}


def dedupe_steps(table: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Rows with unique, strictly increasing ``step`` (last occurrence wins); warns if changed."""
    step = table.get("step")
    if step is None or step.size < 2 or bool(np.all(np.diff(step) > 0)):
        return table
    finite = np.flatnonzero(np.isfinite(step))
    _, last_first = np.unique(step[finite][::-1], return_index=True)  # sorted by step
    keep = finite[::-1][last_first]
    dropped = step.size - keep.size
    warn(f"{path}: steps are not unique and increasing ({dropped} row(s) dropped); "
         "kept the last row of each step, sorted by step")  # fmt: skip
    return {name: column[keep] for name, column in table.items()}


def _seed(summary: dict[str, Any], config: dict[str, Any]) -> int | None:
    value = summary.get("seed", config.get("seed", 0))
    if isinstance(value, bool):
        return None
    try:
        return int(value) if float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        return None


def load_run_checked(path: Path | str) -> Run | None:
    """Load one run directory, or warn naming the bad file and return None."""
    path = Path(path)
    summary_path, config_path = path / SUMMARY_FILE, path / CONFIG_FILE
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        warn(f"{summary_path}: unparsable ({type(err).__name__}: {str(err)[:80]}); run skipped")
        return None
    if not isinstance(summary, dict):
        warn(f"{summary_path}: not a JSON object; run skipped")
        return None
    config: Any = {}
    if config_path.exists():
        import yaml

        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError) as err:
            warn(f"{config_path}: unparsable ({type(err).__name__}); run skipped")
            return None
        if not isinstance(config, dict):
            warn(f"{config_path}: not a mapping; run skipped")
            return None
    seed = _seed(summary, config)
    if seed is None:
        where = summary_path if "seed" in summary else config_path
        warn(f"{where}: seed {summary.get('seed', config.get('seed'))!r} is not an integer; run skipped")
        return None
    summary = {**summary, "seed": seed}
    steps = dedupe_steps(read_table_checked(path / STEPS_FILE), path / STEPS_FILE)
    evals = dedupe_steps(read_table_checked(path / EVAL_FILE), path / EVAL_FILE)
    curvature = dedupe_steps(read_table_checked(path / CURVATURE_FILE), path / CURVATURE_FILE)
    return Run(path=path, config=config, summary=summary, steps=steps, evals=evals, curvature=curvature)


def run_dirs(root: Path | str) -> list[Path]:
    """``root`` itself if it holds summary.json, else every directory below it that does."""
    root = Path(root)
    if (root / SUMMARY_FILE).exists():
        return [root]
    return sorted(p.parent for p in root.rglob(SUMMARY_FILE))


def load_runs(roots: Iterable[Path | str]) -> list[Run]:
    """Every loadable run below ``roots`` (sorted by path per root); bad ones warned and skipped."""
    found = (load_run_checked(p) for root in roots for p in run_dirs(root))
    return [run for run in found if run is not None]
