"""Checkpoints of the last consistent training state (params, optimizer state, counters).

Written atomically (temporary file + rename) into ``<run_dir>/checkpoint/``, so a
run killed while saving still has the previous checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flax import serialization

DIR = "checkpoint"
STATE_FILE = "state.msgpack"
META_FILE = "meta.json"


def exists(run_dir: Path) -> bool:
    return (Path(run_dir) / DIR / META_FILE).exists()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
    """Save state then meta; meta is written last and names the state it belongs to."""
    d = Path(run_dir) / DIR
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / STATE_FILE, serialization.to_bytes({"params": params, "opt_state": opt_state}))
    _atomic_write(d / META_FILE, json.dumps(meta, indent=2).encode())


def load(run_dir: Path, params_template: Any, opt_state_template: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restore into the structure of the templates (a fresh init of the same config)."""
    d = Path(run_dir) / DIR
    meta = json.loads((d / META_FILE).read_text())
    target = {"params": params_template, "opt_state": opt_state_template}
    try:
        state = serialization.from_bytes(target, (d / STATE_FILE).read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{d / STATE_FILE} does not match this config ({err}); resume with the config the run was started with"
        ) from err
    return state["params"], state["opt_state"], meta
