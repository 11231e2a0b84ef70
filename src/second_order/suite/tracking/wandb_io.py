"""Read W&B runs back into the local run-directory format of :mod:`second_order.suite.tracking.runs`.

Sources: an offline run directory (``<run_dir>/wandb/offline-run-*``), whose
``run-<id>.wandb`` log is read with W&B's own ``wandb leet inspect --json``
(:mod:`~second_order.suite.tracking.wandb_leet`, wandb >= 0.31) or, with older wandb, the
fallback parser :mod:`~second_order.suite.tracking.wandb_txlog`; or a W&B cloud project via
``wandb.Api`` (:func:`download_project`).

Leet's JSON joins nested keys with ``"."`` and writes non-finite numbers as
``"NaN"``/``"Infinity"``/``"-Infinity"``: those strings become floats again
(a *string* ``"NaN"`` too), and a dotted summary/config key updates a nested
dict only where one exists, else it stays one flat key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from second_order.suite.tracking import wandb_leet, wandb_txlog
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
)

READERS = ("auto", "leet", "builtin")  # auto: leet when available, else the builtin fallback parser
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_RUN_ATTRS = {
    "run_id": "run_id",
    "project": "project",
    "entity": "entity",
    "display_name": "name",
    "run_group": "group",
    "job_type": "job_type",
}  # leet run field -> WandbRecord attribute

# history key -> local column
TRAIN_LOSS, EVAL_LOSS, EVAL_ACC = "train/loss", "eval/loss", "eval/acc"
OPT_PREFIX = "opt/"


@dataclasses.dataclass
class WandbRecord:
    """One W&B run: config, full history (one dict per ``log`` call), summary."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    project: str | None = None
    entity: str | None = None
    job_type: str | None = None
    exit_code: int | None = None  # None: no exit record (crashed or still running)


# --------------------------------------------------------------------------- offline: finding logs


def offline_run_dirs(run_dir: Path | str) -> list[Path]:
    """The W&B run folders (``offline-run-*`` / ``run-*``) under ``run_dir/wandb``, oldest first.

    A resumed run has one folder per process; :func:`read_offline_runs` merges them.
    """
    dirs = [
        p
        for root in (Path(run_dir) / "wandb", Path(run_dir) / ".wandb")  # wandb uses .wandb if it exists
        if root.is_dir()
        for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and any(p.glob("run-*.wandb"))
    ]
    return sorted(dirs, key=lambda p: (_timespec(p.name), p.name))


def _timespec(name: str) -> str:
    m = re.search(r"\d{8}_\d{6}", name)
    return m.group(0) if m else ""


def _log_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such W&B run folder or .wandb file")
    logs = sorted(path.glob("run-*.wandb"))
    if len(logs) != 1:
        raise FileNotFoundError(
            f"{path}: expected one run-*.wandb file, found {len(logs)}; pass the .wandb file itself"
        )
    return logs[0]


# --------------------------------------------------------------------------- offline: reading logs


def _use_leet(reader: str) -> bool:
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    return reader == "leet" or (reader == "auto" and wandb_leet.available())


def log_records(path: Path | str, reader: str = "auto") -> Iterator[dict[str, Any]]:
    """Records of one ``.wandb`` file (or the run folder holding it) as ``wandb leet inspect --json`` dicts.

    ``reader``: ``"leet"`` (:mod:`~second_order.suite.tracking.wandb_leet`, wandb >= 0.31),
    ``"builtin"`` (fallback parser :mod:`~second_order.suite.tracking.wandb_txlog`) or
    ``"auto"`` (leet when available).
    """
    log = _log_file(Path(path))
    return wandb_leet.records(log) if _use_leet(reader) else wandb_txlog.iter_records(log)


def transaction_log_finished(path: Path | str, reader: str = "auto") -> bool:
    """Whether the run's exit record has reached the ``.wandb`` file."""
    return (wandb_leet.finished if _use_leet(reader) else wandb_txlog.finished)(Path(path))


def wait_for_transaction_log(path: Path | str, timeout: float = 10.0, reader: str = "auto") -> bool:
    """Poll until :func:`transaction_log_finished`; False after ``timeout`` seconds.

    ``run.finish()`` returns before wandb-core has flushed the file (wandb 0.30,
    0.31), so code that reads an offline run right after finishing it must wait.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not transaction_log_finished(path, reader):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
    return True


# --------------------------------------------------------------------------- offline: folding records


def _finite(v: Any) -> Any:
    """Undo leet's string form of non-finite numbers, recursively."""
    if isinstance(v, str):
        return _NON_FINITE.get(v, v)
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _locate(target: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    """Where a dotted key lands: inside existing sub-dicts along its prefix, else as one flat key."""
    node, parts = target, dotted.split(".")
    i = 0
    while i < len(parts) - 1 and isinstance(node.get(parts[i]), dict):
        node, i = node[parts[i]], i + 1
    return node, ".".join(parts[i:])


def _apply_updates(target: dict[str, Any], body: Mapping[str, Any]) -> None:
    """Apply a leet summary/config body (``update`` map, ``remove`` list) to a nested dict."""
    for key, value in (body.get("update") or {}).items():
        node, leaf = _locate(target, key)
        node[leaf] = _finite(value)
    for item in body.get("remove") or []:
        node, leaf = _locate(target, item.get("key") or ".".join(item.get("nested_key") or []))
        node.pop(leaf, None)


def _blank_record() -> WandbRecord:
    return WandbRecord(config={}, history=[], summary={})


def _fold(records: Iterable[Mapping[str, Any]], out: WandbRecord) -> int:
    """Apply ``records`` to ``out``; returns how many there were."""
    n = 0
    for n, rec in enumerate(records, start=1):  # noqa: B007 - n is the count returned
        kind = str(rec.get("type"))
        body = rec.get(kind) or {}
        if kind == "history":
            out.history.append(_finite(dict(body.get("item") or {})))
        elif kind == "summary":
            _apply_updates(out.summary, body)
        elif kind == "config":
            _apply_updates(out.config, body)
        elif kind == "run":
            for src, attr in _RUN_ATTRS.items():
                setattr(out, attr, body.get(src) or getattr(out, attr))
            out.tags = list(body.get("tags") or []) or out.tags
            _apply_updates(out.config, body.get("config") or {})
            _apply_updates(out.summary, body.get("summary") or {})
        elif kind == "exit":
            out.exit_code = int(body.get("exit_code") or 0)
    return n


def _tidy(rec: WandbRecord) -> WandbRecord:
    """Drop W&B's internal ``_wandb`` entries (nested, or flat ``_wandb.*`` keys)."""
    rec.config = {k: v for k, v in rec.config.items() if k.split(".")[0] != "_wandb"}
    rec.summary = {k: v for k, v in rec.summary.items() if k.split(".")[0] != "_wandb"}
    return rec


def _fold_log(path: Path | str, reader: str, out: WandbRecord) -> WandbRecord:
    """Fold one log's records into ``out``; a log without any record is an error."""
    log = _log_file(Path(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = _fold(log_records(log, reader), out)
    if not seen:
        raise ValueError(f"{log}: no W&B records (empty, or not a W&B transaction log); pass a run-*.wandb file")
    for w in caught:  # a truncated tail is worth a warning only when something was read
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def read_offline_run(offline_run_dir: Path | str, reader: str = "auto") -> WandbRecord:
    """Read one W&B run folder (``.../wandb/offline-run-*``) or its ``.wandb`` file.

    History rows are exactly what ``log`` received (nested dicts flattened to
    dotted keys, plus W&B's ``_step``, ``_runtime``, ``_timestamp``), like
    ``Run.scan_history()`` rows; config and summary are plain dicts without
    W&B's internal ``_wandb`` entry.  ``reader``: see :func:`log_records`.
    """
    return _tidy(_fold_log(offline_run_dir, reader, _blank_record()))


def read_offline_runs(run_dir: Path | str, reader: str = "auto") -> WandbRecord:
    """Merge all W&B folders of one training run (original + resumed), in order."""
    dirs = offline_run_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(
            f"no W&B offline runs under {Path(run_dir) / 'wandb'}; was the run logged with logger.wandb.mode=offline?"
        )
    out = _blank_record()
    for d in dirs:
        out.exit_code = None
        _fold_log(d, reader, out)
    return _tidy(out)


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
    ``eval/loss``, ``eval/acc``).  Existing files in ``out_dir`` are replaced.
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
    write_json(out / SUMMARY_FILE, summary)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(_yaml_safe(record.config), sort_keys=False))
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
