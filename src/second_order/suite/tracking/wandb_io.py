"""Read W&B runs back into the local run-directory format of :mod:`second_order.suite.tracking.runs`.

Two sources:

* an offline run directory (``<run_dir>/wandb/offline-run-*``), parsed from its
  ``run-<id>.wandb`` transaction log, so offline runs can be inspected and
  converted without ever syncing them;
* a W&B project in the cloud, through ``wandb.Api`` (:func:`download_project`).

wandb 0.31 no longer ships a Python reader for the transaction log (the old
``wandb.sdk.internal.datastore`` went away with the Go core), so
:func:`iter_transaction_log` reads the framing itself: a 7-byte header
(``":W&B"``, magic ``0xBEE1``, version 0) followed by LevelDB-log style 32 KiB
blocks of chunks ``crc32 | length | type`` (FULL/FIRST/MIDDLE/LAST).  Each
reassembled payload is decoded with W&B's own protobuf
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

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

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(_LAST + 1)]

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


# --------------------------------------------------------------------------- offline


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


def _payloads(data: bytes, offset: int, where: Path) -> Iterator[bytes]:
    """Reassembled record payloads of ``data`` = file bytes from ``offset`` on.

    ``offset`` must be a block boundary (0 = file start, header included).
    Chunks continuing a record that began before ``offset`` are skipped.
    """
    pos = _HEADER.size if offset == 0 else 0
    pending: bytearray | None = None
    while True:
        room = _BLOCK - (offset + pos) % _BLOCK
        if room < _CHUNK.size:  # block trailer padding
            pos += room
            room = _BLOCK
        if pos + _CHUNK.size > len(data):
            break
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero fill: skip to next block
            pos += room
            continue
        start, end = pos + _CHUNK.size, pos + _CHUNK.size + length
        if kind > _LAST or end > len(data) or zlib.crc32(data[start:end], _TYPE_CRC[kind]) != crc:
            warnings.warn(f"{where}: corrupt or truncated data at byte {offset + pos}; ignoring the rest")
            return
        pos = end
        if kind == _FULL:
            pending = None
            yield data[start:end]
        elif kind == _FIRST:
            pending = bytearray(data[start:end])
        elif pending is not None:
            pending += data[start:end]
            if kind == _LAST:
                yield bytes(pending)
                pending = None
    if pending is not None:
        warnings.warn(f"{where}: log ends inside a record; ignoring it")


def _check_header(path: Path, head: bytes) -> None:
    if len(head) < _HEADER.size:
        raise ValueError(f"{path}: too short for a W&B transaction log")
    ident, magic, version = _HEADER.unpack_from(head)
    if ident != _IDENT or magic != _MAGIC or version != _VERSION:
        raise ValueError(f"{path}: not a W&B transaction log (header {head[:7]!r})")


def iter_transaction_log(path: Path | str) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file in order.

    A truncated or corrupt tail (a crashed run, or a run still writing) ends the
    iteration with a warning; a bad file header raises ``ValueError``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    data = path.read_bytes()
    _check_header(path, data)
    for payload in _payloads(data, 0, path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def transaction_log_finished(path: Path | str) -> bool:
    """Whether the run's exit record has reached the ``.wandb`` file (reads only its tail)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    try:
        with open(path, "rb") as f:
            _check_header(path, f.read(_HEADER.size))
            size = f.seek(0, 2)
            offset = max(0, (size - 1) // _BLOCK - 1) * _BLOCK  # last two blocks
            f.seek(offset)
            data = f.read()
    except (OSError, ValueError):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tail still being written is expected here
        for payload in _payloads(data, offset, path):
            rec = pb.Record()
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "exit":
                return True
    return False


def wait_for_transaction_log(path: Path | str, timeout: float = 10.0) -> bool:
    """Poll until :func:`transaction_log_finished`; False after ``timeout`` seconds.

    ``run.finish()`` returns before wandb-core has flushed the file (wandb 0.31),
    so code that reads an offline run right after finishing it must wait.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not transaction_log_finished(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
    return True


def _loads(s: str) -> Any:
    return json.loads(s) if s else None


def _history_value(item: Any) -> Any:
    kind = item.WhichOneof("value")  # typed form (x_history_value_encoding="typed")
    if kind is None:
        return _loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return _loads(item.json)
    return getattr(item, kind)


def _item_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _apply_updates(target: dict[str, Any], rec: Any) -> None:
    """Apply a Summary/ConfigRecord (``update`` and ``remove`` items) to a nested dict."""
    for item in rec.update:
        path = _item_path(item)
        node = target
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[path[-1]] = _loads(item.value_json)
    for item in rec.remove:
        path = _item_path(item)
        node = target
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)


def _blank_record() -> WandbRecord:
    return WandbRecord(config={}, history=[], summary={})


def _fold(records: Iterable[Any], out: WandbRecord) -> WandbRecord:
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out.history.append({".".join(_item_path(i)): _history_value(i) for i in rec.history.item})
        elif kind == "summary":
            _apply_updates(out.summary, rec.summary)
        elif kind == "config":
            _apply_updates(out.config, rec.config)
        elif kind == "run":
            r = rec.run
            out.run_id = r.run_id or out.run_id
            out.project = r.project or out.project
            out.entity = r.entity or out.entity
            out.name = r.display_name or out.name
            out.group = r.run_group or out.group
            out.job_type = r.job_type or out.job_type
            out.tags = list(r.tags) or out.tags
            _apply_updates(out.config, r.config)
            _apply_updates(out.summary, r.summary)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def _tidy(rec: WandbRecord) -> WandbRecord:
    rec.config = {k: v for k, v in rec.config.items() if k != "_wandb"}
    rec.summary = {k: v for k, v in rec.summary.items() if k != "_wandb"}
    return rec


def _log_file(path: Path) -> Path:
    if path.is_file():
        return path
    logs = sorted(path.glob("run-*.wandb"))
    if len(logs) != 1:
        raise FileNotFoundError(f"{path}: expected one run-*.wandb file, found {len(logs)}")
    return logs[0]


def read_offline_run(offline_run_dir: Path | str) -> WandbRecord:
    """Parse one W&B run folder (``.../wandb/offline-run-*``) or its ``.wandb`` file.

    History rows are exactly what ``log`` received (plus W&B's ``_step``,
    ``_runtime``, ``_timestamp``), like ``Run.scan_history()`` rows; config and
    summary are plain dicts without W&B's internal ``_wandb`` entry.
    """
    return _tidy(_fold(iter_transaction_log(_log_file(Path(offline_run_dir))), _blank_record()))


def read_offline_runs(run_dir: Path | str) -> WandbRecord:
    """Merge all W&B folders of one training run (original + resumed), in order."""
    dirs = offline_run_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"no W&B run folders under {Path(run_dir) / 'wandb'}")
    out = _blank_record()
    for d in dirs:
        out.exit_code = None
        _fold(iter_transaction_log(_log_file(d)), out)
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


def record_to_run_dir(
    record: WandbRecord, out_dir: Path | str, summary_keys: Sequence[str] = SUMMARY_KEYS
) -> Path:
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
        (col, key) for key in {k for row in steps for k in row}
        if (col := _column(key)) and col not in STEP_COLUMNS
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


def _write_table(path: Path, columns: Sequence[str], fields: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> None:
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
