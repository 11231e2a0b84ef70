"""W&B's own reader of ``.wandb`` transaction logs: ``wandb leet inspect`` (wandb >= 0.31).

``wandb leet inspect --json PATH`` prints one JSON object per record,
``{"num": n, "type": kind, kind: {...}}``; ``--summary --json`` prints one
object with the run's state (``exit_code`` is null until the exit record is
written).  The command is a thin Python wrapper around the ``wandb-core`` Go
binary; there is no public Python API for it, so it runs as a subprocess of
this interpreter (``python -m wandb``), i.e. the wandb of the current environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIN_VERSION = (0, 31)  # first wandb with `leet inspect --json` (0.30 has `leet inspect`, text only)


def available() -> bool:
    """Whether the installed wandb has ``wandb leet inspect --json``."""
    import wandb

    m = re.match(r"(\d+)\.(\d+)", wandb.__version__)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= MIN_VERSION


def require() -> None:
    """Raise a one-line ``RuntimeError`` with the fix unless :func:`available`."""
    if not available():
        import wandb

        raise RuntimeError(
            f"`wandb leet inspect --json` needs wandb >= {'.'.join(map(str, MIN_VERSION))} "
            f"(installed: {wandb.__version__}); upgrade wandb or use reader='builtin'"
        )


def _run(path: Path, *flags: str) -> Iterator[str]:
    """stdout lines of ``wandb leet inspect FLAGS PATH``.

    A non-zero exit raises ``ValueError`` naming ``path``; what the command
    itself prints on stderr otherwise (truncated or corrupt tail) becomes a warning.
    """
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(path)]
    # no telemetry upload from a reader: wandb then passes --no-observability to wandb-core
    env = {**os.environ, "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        except OSError as e:
            raise RuntimeError(f"{path}: cannot run `{sys.executable} -m wandb leet inspect`: {e}") from None
        assert proc.stdout is not None
        try:
            yield from proc.stdout
        finally:
            proc.stdout.close()
            rc = proc.wait()
        err.seek(0)
        lines = [line.strip() for line in err if line.strip()]
    # wandb's own "wandb: ..." log lines (e.g. about WANDB_DIR) are not about the file
    message = " ".join(x for x in lines if not x.startswith("wandb: ")) or (" ".join(lines) if rc else "")
    if rc != 0:
        message = re.sub(r"^Error:\s*", "", message) or f"exit status {rc}"
        raise ValueError(f"{path}: not a readable W&B transaction log ({message}); pass a run-*.wandb file")
    if message:
        warnings.warn(
            f"{path}: truncated or corrupt W&B log ({message}); reading only the complete records", stacklevel=2
        )


def records(path: Path | str) -> Iterator[dict[str, Any]]:
    """The records of one ``.wandb`` file, in order (``wandb leet inspect --json``)."""
    require()
    for line in _run(Path(path), "--json"):
        if line.strip():
            yield json.loads(line)


def finished(path: Path | str) -> bool:
    """Whether the run's exit record is in the ``.wandb`` file (``wandb leet inspect --summary --json``)."""
    require()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a tail still being written is expected here
            state = json.loads("".join(_run(Path(path), "--summary", "--json")) or "{}")
    except (OSError, ValueError):
        return False
    return state.get("exit_code") is not None
