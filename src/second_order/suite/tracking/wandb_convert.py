"""Write a :class:`~second_order.suite.tracking.wandb_io.WandbRecord` as a local run directory.

The other half of :mod:`~second_order.suite.tracking.wandb_io` (which reads W&B runs
into records): :func:`record_to_run_dir` turns one record into the files of
:mod:`~second_order.suite.tracking.runs` (``steps.csv``, ``eval.csv``,
``summary.json``, ``config.yaml``), and :func:`download_project` does so for every
run of a W&B cloud project (``wandb.Api``).  History keys map to columns as
``train/loss`` -> ``train_loss``, ``opt/<x>`` -> ``<x>``, ``eval/loss`` -> ``test_loss``,
``eval/acc`` -> ``test_acc``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from second_order.suite.tracking.runs import (
    CONFIG_FILE,
    EVAL_COLUMNS,
    EVAL_FILE,
    STEP_COLUMNS,
    STEPS_FILE,
    SUMMARY_FILE,
    SUMMARY_KEYS,
    CsvLog,
    write_json,
    write_text,
)
from second_order.suite.tracking.wandb_io import (
    EVAL_ACC,
    EVAL_LOSS,
    OPT_PREFIX,
    TRAIN_LOSS,
    WandbRecord,
    offline_run_dirs,
    read_offline_runs,
)

CURVATURE_PREFIX = "curvature/"

# --------------------------------------------------------------------------- conversion


def _num(v: Any) -> float:
    """Float of a history value; None (missing) and unparsable text give NaN."""
    if v is None:
        return math.nan
    try:
        return float(v)  # also "NaN" / "Infinity" strings
    except (TypeError, ValueError):
        return math.nan


def _int_or_nan(v: Any) -> int | float:
    x = _num(v)
    return int(x) if math.isfinite(x) and x == int(x) else x


def _rewind(rows: list[dict[str, Any]], step: float) -> None:
    """Drop rows at or after ``step`` (a resumed run re-logged them; the later ones win)."""
    rows[:] = [r for r in rows if not _num(r.get("step")) >= step]


def split_history(history: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Separate step rows (with ``train/loss``) from eval rows (``eval/loss``/``eval/acc``).

    When a resumed run logs a step that was already logged (it restarted from an
    earlier checkpoint), the earlier rows from that step on are dropped, as
    :func:`second_order.suite.tracking.runs.truncate_after_step` does for the local CSVs.
    """
    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for row in history:
        clean = {k: v for k, v in row.items() if v is not None}
        step = _num(clean.get("step"))
        if TRAIN_LOSS in clean:
            if steps and step <= _num(steps[-1].get("step")):
                _rewind(steps, step)
                _rewind(evals, step)
            steps.append(clean)
        if EVAL_LOSS in clean or EVAL_ACC in clean:
            if evals and step <= _num(evals[-1].get("step")):
                _rewind(evals, step)
            evals.append(clean)
    return steps, evals


def logged_through(run_dir: Path | str) -> dict[str, float]:
    """The last step of each local table (``steps``, ``eval``, ``curvature``) that the W&B
    offline logs under ``run_dir`` hold, in logging order (a resumed segment that logged
    a step again counts from there); ``-1`` for a table they hold nothing of (no log, or
    none readable).  A resumed run sends W&B the rows past these steps that the
    checkpoint covers (:class:`~second_order.suite.tracking.run_logger.RunLogger`)."""
    last = {"steps": -1.0, "eval": -1.0, "curvature": -1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torn tails and skipped empty segments: expected after a kill
        try:
            history = read_offline_runs(run_dir).history if offline_run_dirs(run_dir) else []
        except (OSError, ValueError):
            history = []
    for row in history:
        clean = {k: v for k, v in row.items() if v is not None}
        step = _num(clean.get("step"))
        if TRAIN_LOSS in clean:
            last["steps"] = step
        if EVAL_LOSS in clean or EVAL_ACC in clean:
            last["eval"] = step
        if any(k.startswith(CURVATURE_PREFIX) for k in clean):
            last["curvature"] = step
    return last


def _column(key: str) -> str | None:
    if key.startswith(OPT_PREFIX):
        return key[len(OPT_PREFIX) :]
    if key.startswith("train/") and key != TRAIN_LOSS:
        return "train_" + key[len("train/") :]
    return None


def record_to_run_dir(record: WandbRecord, out_dir: Path | str, summary_keys: Sequence[str] = SUMMARY_KEYS) -> Path:
    """Write ``record`` as a run directory: steps.csv, eval.csv, summary.json, config.yaml.

    Columns: ``train/loss`` -> ``train_loss``, ``opt/<x>`` -> ``<x>`` (after the
    fixed :data:`~second_order.suite.tracking.runs.STEP_COLUMNS`, sorted by name),
    ``eval/loss`` -> ``test_loss``, ``eval/acc`` -> ``test_acc``; missing values
    are written as ``nan``.  ``summary.json`` keeps the ``summary_keys`` (default
    :data:`~second_order.suite.tracking.runs.SUMMARY_KEYS`) present in the W&B summary (``train_loss``,
    ``test_loss``, ``test_acc`` fall back to W&B's last ``train/loss``,
    ``eval/loss``, ``eval/acc``; ``wandb_run_id`` to the record's run id, so that a report
    reading both the run files and this copy can tell they are one run).  Existing files in
    ``out_dir`` are replaced.
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps, evals = split_history(record.history)

    # history key -> CSV column; extra columns sorted by name (W&B keeps no key order)
    extra = sorted(
        (col, key) for key in {k for row in steps for k in row} if (col := _column(key)) and col not in STEP_COLUMNS
    )
    step_fields = {"step": "step", "epoch": "epoch", "train_loss": TRAIN_LOSS, "time_s": "time_s", **dict(extra)}
    eval_fields = {"epoch": "epoch", "step": "step", "time_s": "time_s", "test_loss": EVAL_LOSS, "test_acc": EVAL_ACC}
    _write_table(out / STEPS_FILE, STEP_COLUMNS + tuple(c for c, _ in extra), step_fields, steps)
    _write_table(out / EVAL_FILE, EVAL_COLUMNS, eval_fields, evals)

    summary = {k: record.summary[k] for k in summary_keys if k in record.summary}
    for key, src in (("train_loss", TRAIN_LOSS), ("test_loss", EVAL_LOSS), ("test_acc", EVAL_ACC)):
        if key not in summary and record.summary.get(src) is not None:
            summary[key] = record.summary[src]
    if record.run_id and "wandb_run_id" in summary_keys:
        summary.setdefault("wandb_run_id", record.run_id)  # the run files' own record names it too
    write_json(out / SUMMARY_FILE, summary)
    write_text(out / CONFIG_FILE, yaml.safe_dump(_yaml_safe(record.config), sort_keys=False))
    return out


def _write_table(
    path: Path, columns: Sequence[str], fields: Mapping[str, str], rows: Iterable[Mapping[str, Any]]
) -> None:
    """(Re)write a CSV table; ``fields`` maps column -> history key."""
    path.unlink(missing_ok=True)
    log = CsvLog(path, columns)
    try:
        log.write_rows(
            [(_int_or_nan if col in ("step", "epoch") else _num)(row.get(fields[col])) for col in columns]
            for row in rows
        )
    finally:
        log.close()


def _yaml_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _yaml_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_yaml_safe(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


# --------------------------------------------------------------------------- cloud


def _to_plain(obj: Any) -> Any:
    """W&B API summary objects (``HTTPSummary``, sub-dicts) -> plain dicts/lists."""
    if isinstance(obj, (str, bytes)) or obj is None:
        return obj
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        return {str(k): _to_plain(obj[k]) for k in list(obj.keys())}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", s).strip("._") or "run"


def download_project(
    path: str,
    out_root: Path | str,
    group: str | None = None,
    api: Any = None,
) -> list[Path]:
    """Download every run of ``"entity/project"`` (optionally one ``group``) as run directories.

    Each run becomes ``out_root/<group or project>/<run name or id>`` (``-<id>``
    appended if two runs share a name), built from the full ``run.scan_history()``
    (not the sampled ``history()``), ``run.config`` and ``run.summary``.
    ``api`` defaults to ``wandb.Api()``.  Returns the written directories.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    project = path.rstrip("/").split("/")[-1]
    base = Path(out_root) / _safe_name(group or project)
    written: list[Path] = []
    used: set[str] = set()
    for run in api.runs(path, filters={"group": group} if group else {}):
        run_id = str(getattr(run, "id", "") or "")
        record = WandbRecord(
            config={k: v for k, v in _to_plain(run.config or {}).items() if not k.startswith("_")},
            history=[dict(row) for row in run.scan_history()],
            summary={k: v for k, v in _to_plain(run.summary or {}).items() if k != "_wandb"},
            run_id=run_id or None,
            name=getattr(run, "name", None),
            group=getattr(run, "group", None),
            tags=list(getattr(run, "tags", None) or []),
            project=project,
            job_type=getattr(run, "job_type", None),
        )
        leaf = _safe_name(record.name or run_id)
        if leaf in used:
            leaf = _safe_name(f"{leaf}-{run_id}")
        used.add(leaf)
        written.append(record_to_run_dir(record, base / leaf))
    return written
