"""Timing primitives: AOT-compiled measurements, round-robin groups, CPU-contention monitor."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def now() -> float:
    return time.perf_counter()


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def measure(
    fn: Callable,
    *args: Any,
    repeats: int,
    min_total_s: float,
    budget_s: float | None = None,
    once: bool = False,
    max_calls: int = 2000,
) -> tuple[dict, Any]:
    """AOT-compile ``jit(fn)`` for ``args``, warm up once, time ``repeats`` calls; return (timing, output).

    A call faster than 10 ms is repeated until ``min_total_s`` was spent; ``budget_s`` stops
    repeating slow ones; ``once`` times the first call only (no warm-up).
    """
    t0 = now()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = now() - t0
    t0 = now()
    out = block(compiled(*args))
    first = now() - t0
    if once:
        return {
            "median_s": first,
            "compile_s": compile_s,
            "warmup_s": None,
            "samples_s": [first],
            "n": 1,
            "single_run": True,
        }, out
    n = repeats
    if first < 0.01:
        n = int(min(max_calls, max(repeats, math.ceil(min_total_s / max(first, 1e-6)))))
    samples: list[float] = []
    spent = 0.0
    for _ in range(n):
        if budget_s is not None and samples and spent + samples[-1] > budget_s:
            break
        t0 = now()
        out = block(compiled(*args))
        samples.append(now() - t0)
        spent += samples[-1]
    timing: dict[str, Any] = {
        "median_s": statistics.median(samples),
        "compile_s": compile_s,
        "warmup_s": first,
        "n": len(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }
    if len(samples) <= 20:
        timing["samples_s"] = samples
    return timing, out


def measure_group(
    items: dict[str, tuple[Callable, tuple]],
    *,
    repeats: int,
    min_total_s: float,
    max_rounds: int = 20000,
    keep_output: bool = False,
) -> dict[str, dict]:
    """Time several fast functions round-robin (A B C A B C …) so that transients hit them alike.

    Each is compiled ahead of time and warmed up once; rounds continue until every function
    has been timed for ``min_total_s`` seconds in all (at least ``repeats`` rounds).
    ``keep_output``: each timing also holds its warm-up call's output under ``_output``.
    """
    compiled: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, (fn, args) in items.items():
        t0 = now()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s = now() - t0
        t0 = now()
        output = block(compiled[name](*args))
        out[name] = {"compile_s": compile_s, "warmup_s": now() - t0}
        if keep_output:
            out[name]["_output"] = output
    samples: dict[str, list[float]] = {name: [] for name in items}
    spent = 0.0
    rounds = 0
    while rounds < max_rounds and (rounds < repeats or spent < min_total_s * len(items)):
        for name, (_, args) in items.items():
            t0 = now()
            block(compiled[name](*args))
            dt = now() - t0
            samples[name].append(dt)
            spent += dt
        rounds += 1
    for name, xs in samples.items():
        out[name].update(
            median_s=statistics.median(xs), n=len(xs), min_s=min(xs), max_s=max(xs), interleaved=list(items)
        )
    return out


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def med(t: Any) -> float | None:
    """The median of a timing dict, else None (skipped, missing)."""
    return t.get("median_s") if isinstance(t, dict) else None


def sec(t: Any) -> float:
    """The median of a timing that was measured (a KeyError/TypeError otherwise)."""
    return float(t["median_s"])


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


Snapshot = tuple[float, "float | None", float]


class CpuMonitor:
    """CPU time used by other processes while a section ran (/proc/stat busy − this process)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def snapshot(self) -> Snapshot:
        busy = None
        try:
            f = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(f[:8]) - f[3] - f[4]) / self.tick  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return now(), busy, t.user + t.system + t.children_user + t.children_system

    def since(self, start: Snapshot) -> dict:
        end = self.snapshot()
        wall, own = end[0] - start[0], end[2] - start[2]
        out = {"wall_s": wall, "own_cpu_s": own, "load_average_1m": round(os.getloadavg()[0], 2)}
        if start[1] is not None and end[1] is not None:
            foreign = max(0.0, (end[1] - start[1]) - own)
            out.update(foreign_cpu_s=foreign, foreign_cpu_share=foreign / max(wall * (os.cpu_count() or 1), 1e-9))
        return out
