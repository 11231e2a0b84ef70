"""A record of where a run ran: versions, devices, git commit, host."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "hydra-core", "omegaconf", "wandb", "second-order")


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD commit of the checkout (``+dirty`` when it has uncommitted changes), or None."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu() -> dict[str, Any]:
    """``cpu_model`` (``/proc/cpuinfo``'s model name; None where there is none) and ``cpu_cores``
    (the cores this process may run on): CPU timings mean little without them."""
    model = None
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": model, "cpu_cores": cores}


def record() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu(),
        "host": socket.gethostname(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "x64": bool(jax.config.read("jax_enable_x64")),
        "xla_flags": os.environ.get("XLA_FLAGS") or None,  # e.g. an optimization level: timings depend on it
        "git_commit": git_commit(),
        "started_at": timestamp(),
    }


#: The format of ``started_at`` / ``ended_at`` (local time with its UTC offset, to the second).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def timestamp() -> str:
    """Now, as :data:`TIME_FORMAT`."""
    return time.strftime(TIME_FORMAT)


def new_segment(start_step: int, record_now: dict[str, Any], placement: dict[str, Any]) -> dict[str, Any]:
    """The summary's entry for this (re)start, open until :func:`end_segment`.

    ``started_at`` / ``ended_at`` and ``slurm_job`` (``$SLURM_JOB_ID``, one per job and per
    array task; None outside SLURM) let a report find timed runs that shared a machine at
    once (:mod:`second_order.suite.report.overlaps`).
    """
    return {
        "start_step": int(start_step),
        "end_step": None,  # until this segment ends
        **placement,
        "host": record_now["host"],
        "slurm_job": os.environ.get("SLURM_JOB_ID") or None,
        "started_at": record_now["started_at"],
        "ended_at": None,
    }


def end_segment(segment: dict[str, Any], end_step: int) -> None:
    """Close ``segment`` at ``end_step``, now."""
    segment["end_step"] = int(end_step)
    segment["ended_at"] = timestamp()


def append_segment(path: Path, record_now: dict[str, Any], start_step: int) -> None:
    """Add this (re)start to ``environment.json``; never overwrite earlier segments.

    The file keeps the first segment's record at top level (where older readers look)
    and every segment ever started, each with its ``start_step``, under ``segments``.
    """
    from second_order.suite.tracking.runs import write_json

    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            data = {}
    segments = list(data.get("segments") or ([{"start_step": 0, **data}] if data else []))
    segments.append({"start_step": int(start_step), **record_now})
    top = {k: v for k, v in (data or record_now).items() if k != "segments"}
    write_json(path, {**top, "segments": segments})
