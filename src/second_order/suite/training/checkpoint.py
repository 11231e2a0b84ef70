"""Checkpoints of the last consistent training state, committed as one unit.

Layout: ``<run_dir>/checkpoint/step_<000000123>-<k>/{state.msgpack, meta.json}``
(``k`` counts saves of the same step: a committed directory is never overwritten).  A
checkpoint is written into a hidden temporary directory, fsynced, and published by
one ``rename`` of that directory (atomic on POSIX file systems); older checkpoints
are deleted only afterwards.  A kill at any instant therefore leaves the previous
checkpoint or the new one, never new parameters beside an old step count.
Temporary directories left by a kill are ignored and cleaned up by the next save.

This is the same commit protocol orbax-checkpoint uses (temporary directory, then
rename); we write it directly because a run's state is a few kilobytes to
megabytes and orbax's asynchronous machinery adds seconds of import and thread
start-up to every run for no gain here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from flax import serialization

from second_order.suite.tracking.runs import fsync_dir

DIR = "checkpoint"
STATE_FILE = "state.msgpack"
META_FILE = "meta.json"
_PREFIX = "step_"


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used; the message names the file and the fix."""


def _key(path: Path) -> tuple[int, int] | None:
    """``step_000000123-2`` → (123, 2): the step and the how-many-th save of that step."""
    name = path.name
    if not name.startswith(_PREFIX):
        return None
    step, _, seq = name[len(_PREFIX) :].partition("-")
    if not step.isdigit() or not (seq or "0").isdigit():
        return None
    return int(step), int(seq or 0)


def _complete(run_dir: Path) -> list[Path]:
    """Committed checkpoint directories, oldest first."""
    root = Path(run_dir) / DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _key(p) is not None]
    return sorted(found, key=lambda p: _key(p) or (0, 0))


def latest(run_dir: Path) -> Path | None:
    """The newest committed checkpoint directory, or None."""
    found = _complete(run_dir)
    return found[-1] if found else None


def latest_step(run_dir: Path) -> int:
    """The step of the newest committed checkpoint (0 when there is none)."""
    d = latest(run_dir)
    key = _key(d) if d is not None else None
    return key[0] if key is not None else 0


def clear(run_dir: Path) -> None:
    """Remove every checkpoint (a fresh run in a directory that had some)."""
    shutil.rmtree(Path(run_dir) / DIR, ignore_errors=True)


def exists(run_dir: Path) -> bool:
    return latest(run_dir) is not None


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(run_dir: Path, params: Any, opt_state: Any, meta: dict[str, Any]) -> Path:
    """Commit ``{params, opt_state}`` and ``meta`` (must hold ``step``) as one checkpoint."""
    root = Path(run_dir) / DIR
    root.mkdir(parents=True, exist_ok=True)
    step = int(meta["step"])
    saves = [k[1] for p in _complete(run_dir) if (k := _key(p)) is not None and k[0] == step]
    final = root / f"{_PREFIX}{step:09d}-{max(saves, default=-1) + 1}"  # never overwrite a committed one
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write(tmp / STATE_FILE, serialization.to_bytes({"params": params, "opt_state": opt_state}))
    _write(tmp / META_FILE, json.dumps(meta, indent=2).encode())
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(root)
    for old in _complete(run_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(run_dir: Path, params_template: Any, opt_state_template: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restore the newest checkpoint into the structure of the templates (a fresh init).

    Raises :class:`CheckpointError` naming the file when it is unreadable or does not
    match this config's parameters and optimizer state.
    """
    d = latest(run_dir)
    if d is None:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / DIR}")
    fix = "start the run afresh in a new directory (drop trainer.resume=true or set hydra.run.dir=<new dir>)"
    try:
        meta = json.loads((d / META_FILE).read_text())
        int(meta["step"])
        dict(meta["clock"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {d / META_FILE} is unreadable ({type(err).__name__}: {err}); {fix}"
        ) from None
    target = {"params": params_template, "opt_state": opt_state_template}
    try:
        state = serialization.from_bytes(target, (d / STATE_FILE).read_bytes())
    except Exception as err:  # msgpack raises many types on truncated or garbage bytes
        raise CheckpointError(
            f"checkpoint {d / STATE_FILE} is unreadable or does not match this config "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {fix}"
        ) from None
    return state["params"], state["opt_state"], meta
