"""Read W&B offline runs back as :class:`WandbRecord` (config, full history, summary).

Source: an offline run directory (``<run_dir>/wandb/offline-run-*``), whose
``run-<id>.wandb`` log is read with W&B's own ``wandb leet inspect --json``
(:mod:`~second_order.suite.tracking.wandb_leet`, wandb >= 0.31) or, with older wandb, the
fallback parser :mod:`~second_order.suite.tracking.wandb_txlog`.  A W&B cloud project is
read with ``wandb.Api`` by :func:`~second_order.suite.tracking.wandb_convert.download_project`,
and :func:`~second_order.suite.tracking.wandb_convert.record_to_run_dir` writes a record in
the local run-directory format of :mod:`second_order.suite.tracking.runs`.

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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from second_order.suite.tracking import wandb_leet, wandb_txlog

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

# the history keys the suite logs (wandb_convert maps them to local columns)
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


def _fold_log(path: Path | str, reader: str, out: WandbRecord) -> int:
    """Fold one log's records into ``out``; returns how many there were (0: nothing readable)."""
    log = _log_file(Path(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = _fold(log_records(log, reader), out)
    if seen:
        for w in caught:  # a truncated tail is worth a warning only when something was read
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return seen


def _no_records(path: Path | str) -> str:
    return f"{_log_file(Path(path))}: no W&B records (empty, or not a W&B transaction log)"


def read_offline_run(offline_run_dir: Path | str, reader: str = "auto") -> WandbRecord:
    """Read one W&B run folder (``.../wandb/offline-run-*``) or its ``.wandb`` file.

    History rows are exactly what ``log`` received (nested dicts flattened to
    dotted keys, plus W&B's ``_step``, ``_runtime``, ``_timestamp``), like
    ``Run.scan_history()`` rows; config and summary are plain dicts without
    W&B's internal ``_wandb`` entry.  ``reader``: see :func:`log_records`.
    """
    out = _blank_record()
    if not _fold_log(offline_run_dir, reader, out):
        raise ValueError(f"{_no_records(offline_run_dir)}; pass a run-*.wandb file")
    return _tidy(out)


def read_offline_runs(run_dir: Path | str, reader: str = "auto") -> WandbRecord:
    """Merge all W&B folders of one training run (original + resumed), in order.

    A segment killed before W&B wrote its first block has a log without records: it is
    skipped with a warning (its steps are in the local CSVs), unless no segment has any.
    """
    dirs = offline_run_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(
            f"no W&B offline runs under {Path(run_dir) / 'wandb'}; was the run logged with logger.wandb.mode=offline?"
        )
    out = _blank_record()
    empty = []
    for d in dirs:
        out.exit_code = None
        if not _fold_log(d, reader, out):
            empty.append(d)
    if len(empty) == len(dirs):
        raise ValueError(f"{_no_records(dirs[0])}, and so has every other W&B run under {Path(run_dir) / 'wandb'}")
    for d in empty:
        warnings.warn(f"{_no_records(d)}: skipped (killed before W&B wrote anything?)", UserWarning, stacklevel=2)
    return _tidy(out)
