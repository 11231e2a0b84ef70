"""Fallback reader of W&B ``.wandb`` transaction logs, for wandb < 0.31.

wandb >= 0.31 reads these logs itself (``wandb leet inspect --json``, used by
:mod:`second_order.suite.tracking.wandb_io`); older versions have no public
reader.  This module reads the framing directly: a 7-byte header (``":W&B"``,
magic ``0xBEE1``, version 0), then LevelDB-log style 32 KiB blocks of chunks
``crc32 | length | type`` (FULL/FIRST/MIDDLE/LAST); each reassembled payload is
a ``wandb.proto.wandb_internal_pb2.Record``.

:func:`iter_records` yields each record as the same dict that
``wandb leet inspect --json`` prints for it (for the record types the reader
uses: run, history, summary, config, metric, exit), so both readers feed one
code path; ``tests/test_wandb.py`` checks that they agree.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(_LAST + 1)]
_RUN_FIELDS = ("run_id", "entity", "project", "display_name", "run_group", "job_type")


def _payloads(data: bytes, offset: int, where: Path) -> Iterator[bytes]:
    """Reassembled record payloads of ``data`` = file bytes from ``offset`` (a block boundary) on."""
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
            warnings.warn(
                f"{where}: truncated or corrupt W&B log at byte {offset + pos}; reading only the records before it",
                stacklevel=2,
            )
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
        warnings.warn(
            f"{where}: truncated or corrupt W&B log (ends inside a record); reading only the records before it",
            stacklevel=2,
        )


def _check_header(path: Path, head: bytes) -> None:
    ident, magic, version = _HEADER.unpack_from(head.ljust(_HEADER.size, b"\0"))
    if ident != _IDENT or magic != _MAGIC or version != _VERSION:
        raise ValueError(f"{path}: not a W&B transaction log (header {head[:7]!r}); pass a run-*.wandb file")


def _protos(path: Path, data: bytes, offset: int) -> Iterator[Any]:
    # wandb's own record schema (internal, but stable across the versions that need this fallback)
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in _payloads(data, offset, path):
        rec = pb.Record()  # type: ignore[attr-defined]
        rec.ParseFromString(payload)
        yield rec


def _leet_value(v: Any) -> Any:
    """JSON value as leet prints it: non-finite floats become "NaN"/"Infinity"/"-Infinity"."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, list):
        return [_leet_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _leet_value(x) for k, x in v.items()}
    return v


def _item_value(item: Any) -> Any:
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind is None or kind == "json":  # JSON form (the default); typed form otherwise
        text = item.json if kind == "json" else item.value_json
        return _leet_value(json.loads(text)) if text else None
    return None if kind == "none" else _leet_value(getattr(item, kind))


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _updates(rec: Any) -> dict[str, Any]:
    """A Summary/ConfigRecord as ``{"update": {dotted key: value}, "remove": [...]}``."""
    out: dict[str, Any] = {}
    if len(rec.update):
        out["update"] = {_item_key(i): _item_value(i) for i in rec.update}
    if len(rec.remove):
        out["remove"] = [{"key": i.key} if i.key else {"nested_key": list(i.nested_key)} for i in rec.remove]
    return out


def _record_dict(num: int, rec: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    kind = rec.WhichOneof("record_type") or "unknown"
    msg: Any = getattr(rec, kind, None)
    if kind == "history":
        body: dict[str, Any] = {"item": {_item_key(i): _item_value(i) for i in msg.item}, "step": {"num": msg.step.num}}
    elif kind in ("summary", "config"):
        body = _updates(msg)
    elif kind == "exit":  # leet prints exit_code even when 0
        body = {**MessageToDict(msg, preserving_proto_field_name=True), "exit_code": msg.exit_code}
    elif kind == "run":
        body = {f: getattr(msg, f) for f in _RUN_FIELDS if getattr(msg, f)}
        if len(msg.tags):
            body["tags"] = list(msg.tags)
        for part in ("config", "summary"):
            if msg.HasField(part) and (upd := _updates(getattr(msg, part))):
                body[part] = upd
    else:
        body = MessageToDict(msg, preserving_proto_field_name=True) if msg is not None else {}
    return {"num": num, "type": kind, kind: body}


def iter_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of a ``.wandb`` file as ``wandb leet inspect --json`` dicts, in order.

    A truncated or corrupt tail ends the iteration with a warning; a file that
    is not a W&B log raises ``ValueError``.
    """
    path = Path(path)
    data = path.read_bytes()
    _check_header(path, data[: _HEADER.size])
    for num, rec in enumerate(_protos(path, data, 0), start=1):
        yield _record_dict(num, rec)


def finished(path: Path | str) -> bool:
    """Whether the run's exit record has reached the ``.wandb`` file (reads only its tail)."""
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
        return any(rec.WhichOneof("record_type") == "exit" for rec in _protos(path, data, offset))
