"""Guards taken before any training work: one run per directory, enough memory for the step."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"


class RunDirBusy(Exception):
    """Another process holds the run directory (the message names it and the fix)."""


class InsufficientMemory(Exception):
    """The compiled step needs more memory than the device has (the message gives both)."""


class RunDirLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` for the lifetime of a run.

    The kernel releases the lock when the process ends, however it ends (kill -9,
    out of memory), so a dead run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                holder = self.path.read_text().strip() or "another process"
                raise RunDirBusy(
                    f"run directory {self.path.parent} is in use by a running run ({holder}); wait for it to "
                    "finish, stop it, or start this one elsewhere with hydra.run.dir=<dir>"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def available_bytes(device: Any) -> int | None:
    """Memory the step may use: the accelerator's limit, or the host's available RAM."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(compiled: Any, device: Any, parameter_count: int | None = None) -> None:
    """Refuse a compiled step whose arguments, outputs and temporaries exceed the memory.

    XLA knows after compilation how much temporary memory the step needs (e.g. n²
    scalars for a dense n × n Hessian); checking it here turns an allocation failure
    minutes into a run into one line before the first step.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # backends without the analysis: nothing to check
        return
    if stats is None:
        return
    needed = sum(int(getattr(stats, k, 0) or 0) for k in
                 ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"))  # fmt: skip
    have = available_bytes(device)
    if have is not None and needed > have:
        n = (
            ""
            if parameter_count is None
            else f" for n = {parameter_count:,} parameters (n² = {parameter_count**2:.2g})"
        )
        raise InsufficientMemory(
            f"the compiled training step{n} needs {needed / 1e9:.1f} GB ({int(stats.temp_size_in_bytes) / 1e9:.1f} "
            f"GB of temporaries) but {have / 1e9:.1f} GB is available on {device.platform}; use a smaller model "
            "(model.hidden), fewer steps per chunk (trainer.chunk_steps), or a method whose curvature needs no "
            "dense matrix (a Hessian-free method such as optimizer=hessian_free)"
        )
