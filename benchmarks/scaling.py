"""Section 4, ``scaling``: step time against hidden width × batch size (the SCALING methods)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.methods import SCALING, Method, labels, low_rank_bound, subset
from benchmarks.problem import Problem, diag_summary
from benchmarks.settings import Settings
from benchmarks.timing import log, measure, med, sec, skipped


def section_scaling(data: Any, s: Settings, methods: Mapping[str, Method], parts: dict | None) -> dict:
    """One step per method, width and batch; dense and low-rank Newton skipped when predicted too slow or big."""
    chosen = subset(methods, SCALING)
    names = labels(list(chosen))
    rows: list[dict] = []
    notes: list[str] = []
    mem_avail = available_memory_bytes()
    cal = calibration(parts, [k for k, m in chosen.items() if m.low_rank])
    R = min(s.repeats, 3)
    for hidden in s.widths:
        for batch in s.batches:
            prob = Problem(data, hidden, batch, s.num_classes)
            n = prob.n
            reused = parts if parts is not None and [hidden, batch] == [parts["hidden"][0], parts["batch"]] else None
            x, y = prob.batch_xy(0, 0)
            if reused is not None:
                grad_t = reused["parts"]["gradient"]
            else:
                grad_t, _ = measure(prob.grad_fn(), prob.params, x, y, repeats=R, min_total_s=s.min_total_s)
            for key, method in chosen.items():
                row = {"hidden": hidden, "batch": batch, "param_count": n, "method": key}
                if reused is not None and med(reused["steps"].get(key)) is not None:
                    row.update(step=reused["steps"][key], gradient_s=med(grad_t), reused_from="parts")
                    rows.append(row)
                    continue
                max_rank = None
                why = None
                if method.dense_hessian:
                    why = newton_skip(n, batch, cal, s.cap_s, mem_avail)
                elif method.low_rank:
                    # The rank bound itself (not a smaller configured max_rank): exact, never the dense fallback.
                    max_rank = s.low_rank_max_rank or low_rank_bound(batch, hidden, s.num_classes)
                    why = lowrank_skip(n, batch, max_rank, cal, s.cap_s, mem_avail)
                if why:
                    row["step"] = skipped(why)
                    rows.append(row)
                    notes.append(f"{names[key]} at hidden {hidden}, batch {batch} (n={n}): {why}")
                    continue
                tx = method.tx(max_rank)
                t, out = measure(
                    prob.step_fn(tx),
                    prob.params,
                    tx.init(prob.params),
                    x,
                    y,
                    repeats=R,
                    min_total_s=s.min_total_s,
                    budget_s=s.slow_budget_s,
                )
                t["diagnostics"] = diag_summary(out[3])
                if max_rank:
                    t["max_rank"] = max_rank
                row.update(step=t, gradient_s=med(grad_t))
                rows.append(row)
                log(f"scaling hidden={hidden} batch={batch} n={n} {key}: {sec(t) * 1e3:.3f} ms")
    return {
        "widths": list(s.widths),
        "batches": list(s.batches),
        "methods": list(chosen),
        "rows": rows,
        "notes": notes,
        "cap_s": s.cap_s,
    }


def calibration(parts: dict | None, low_rank_keys: list[str]) -> dict | None:
    """Timings of the ``parts`` section the skip predictions scale from (None when it did not run)."""
    if parts is None:
        return None
    pt = parts["parts"]
    low = next((parts["steps"][k] for k in low_rank_keys if med(parts["steps"].get(k)) is not None), None)
    return {
        "n": parts["param_count"],
        "batch": parts["batch"],
        "hessian_s": med(pt["dense_hessian"]),
        "cholesky_s": med(pt["cholesky"]),
        "gradient_s": med(pt["gradient"]),
        "lowrank_s": med(low),
        "lowrank_k": (low or {}).get("max_rank"),
    }


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def newton_skip(n: int, batch: int, cal: dict | None, cap_s: float, mem: int) -> str | None:
    """Why a dense-Hessian step is not run at this size (memory or predicted time), else None."""
    need = 4 * n * n * 8  # H, H + λI, its Cholesky factor, headroom
    if need > 0.5 * mem:
        return f"n²-sized float64 matrices need ~{need / 2**30:.1f} GiB (> half of {mem / 2**30:.1f} GiB available)"
    if cal is None:
        return None if n <= 4000 else "no calibration (parts section not run)"
    pred = cal["hessian_s"] * (n / cal["n"]) ** 2 * (batch / cal["batch"]) + cal["cholesky_s"] * (n / cal["n"]) ** 3
    if 2 * pred > cap_s:
        return f"predicted {pred:.0f} s per step (dense Hessian ∝ batch·n², Cholesky ∝ n³), over the {cap_s:.0f} s cap"
    return None


def lowrank_skip(n: int, batch: int, k: int, cal: dict | None, cap_s: float, mem: int) -> str | None:
    """Why a low-rank step of rank ``k`` is not run at this size, else None."""
    if k * 4 > n:
        return (
            f"rank bound {k} is not ≪ n = {n}: the low-rank path cannot pay off (and a smaller max_rank "
            "may fail the rank check and fall back to the dense path)"
        )
    if 6 * n * (k + 8) * 8 > 0.5 * mem:
        return "n×k sketches do not fit in memory"
    if 4 * n * n * 8 > 0.5 * mem:  # the compiled step also holds the dense fallback (when the rank check fails)
        return (
            f"its dense fallback needs n²-sized float64 matrices, ~{4 * n * n * 8 / 2**30:.1f} GiB "
            f"(> half of {mem / 2**30:.1f} GiB available)"
        )
    if cal is None or not cal.get("lowrank_s"):
        return None if n * k <= 4000 * 1000 else "no calibration (parts section did not time it)"
    k0, n0 = cal["lowrank_k"], cal["n"]
    scale = max(n * k * k / (n0 * k0 * k0), (k / k0) ** 3, k * batch * n / (k0 * cal["batch"] * n0))
    pred = cal["lowrank_s"] * scale
    if 2 * pred > cap_s:
        return f"predicted {pred:.0f} s per step (QR ∝ n·k², eigh ∝ k³), over the {cap_s:.0f} s cap"
    return None
