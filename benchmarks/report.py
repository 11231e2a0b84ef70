"""Output of the benchmark: JSON, Markdown report, scaling plot and the console summary."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.methods import LOW_RANK_SUFFIX, labels
from benchmarks.timing import med


def device_name() -> str:
    """``cpu``, else the accelerator's kind in lower_snake_case (the output files' stem)."""
    dev = jax.devices()[0]
    if jax.default_backend() == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", dev.device_kind.lower()).strip("_") or jax.default_backend()


def fmt_t(t: Any) -> str:
    if not isinstance(t, dict):
        return "–"
    if "skipped" in t:
        return "skipped"
    v = t.get("median_s")
    if v is None:
        return "–"
    s = f"{v * 1e3:.3f} ms" if v < 1 else f"{v:.2f} s"
    return s + (" (est.)" if t.get("estimated_from_parts") else "") + (" (1 run)" if t.get("single_run") else "")


def fmt_x(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}×"


def strip_private(obj: Any) -> Any:
    """JSON-ready copy: keys starting with ``_`` dropped, numpy scalars unwrapped, non-finite → None."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [strip_private(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(res: dict, path: Path) -> None:
    path.write_text(json.dumps(res, indent=1) + "\n")


def cg_methods(p: dict) -> list[str]:
    return [m for m, v in p["cg"].items() if isinstance(v, dict)]


def _parts_md(p: dict, settings: dict) -> list[str]:
    size = "paper size" if p["hidden"] == [settings["paper_hidden"]] else "reduced size (--quick)"
    L = [
        (
            f"## 1. Per-step parts at {size} (784-{p['hidden'][0]}-{settings['num_classes']}, batch {p['batch']}, "
            f"{p['param_count']} parameters; float32 params, float64 curvature/solves)"
        ),
        "",
        "| part | median | compile |",
        "|---|---|---|",
    ]
    for k, t in p["parts"].items():
        L.append(
            f"| {k} | {fmt_t(t)} | {t.get('compile_s', 0) or 0:.2f} s |"
            if "skipped" not in t
            else f"| {k} | skipped ({t['skipped']}) | |"
        )
    L += ["", "| CG solve | params | iterations (median) | solve | per iteration |", "|---|---|---|---|---|"]
    for m in cg_methods(p):
        for lab in ("init", "trained"):
            c = p["cg"][m][lab]
            L.append(
                f"| {m} | {lab} | {c['iterations_median']:.0f} ({min(c['iterations'])}–{max(c['iterations'])}) "
                f"| {c['solve_median_s'] * 1e3:.3f} ms | {c['time_per_iteration_s'] * 1e3:.3f} ms |"
            )
    r = p["ratios"]
    names = labels(list(p["steps"]))
    runs = [t["run"]["steps"] for t in p["steps"].values() if isinstance(t, dict) and "run" in t]
    k = runs[0] if runs else "K"
    L += [
        "",
        f"First step: one call of one step from the initial state. Mean step: one `lax.scan` call of {k} "
        "consecutive steps from the initial state over the epoch's first batches / its steps; it includes "
        "periodic work at its rate (K-FAC's inversions, Shampoo's roots) and pays the dispatch once, as the "
        f"trainer's chunks do. Gradient-equivalents: the mean step / the mean of {k} gradients in one scan on "
        "the same batches, timed round-robin with it (where no mean step was timed: the first step / the "
        "median of those gradients, `gradient_consecutive`); compilation excluded. A full run times the mean "
        "step of every method under the slow budget (all but the dense Newton steps, whose dispatch is "
        "negligible).",
        "",
        "| whole step | first step | mean step | gradient-equivalents |",
        "|---|---|---|---|",
    ]
    for m, t in p["steps"].items():
        mean = fmt_t(t.get("run")) if isinstance(t, dict) else "–"
        L.append(f"| {names[m]} | {fmt_t(t)} | {mean} | {fmt_x(r['step_over_gradient'].get(m), 1)} |")
    cg_it = r["cg_iteration_over_hvp"]
    L += [
        "",
        f"HVP / gradient: {fmt_x(r['hvp_over_gradient'])} (vs float64 gradient "
        f"{fmt_x(r['hvp_over_gradient_f64'])}); GGN product / gradient: {fmt_x(r['ggn_over_gradient'])} "
        f"(float64 {fmt_x(r['ggn_over_gradient_f64'])}); CG iteration / product: "
        + ", ".join(f"{m} {fmt_x(v)}" for m, v in cg_it.items())
        + "; "
        "damped Newton step / (Hessian build + Cholesky): "
        f"{fmt_x(r['newton_damped_step_over_hessian_plus_cholesky'])}; "
        f"jax.hessian / dense_hessian: {fmt_x(r['jax_hessian_over_dense_hessian'])}; "
        f"one curvature-diagnostics call (diagnostics=curvature, {r.get('curvature_diagnostics_products')} "
        f"Hessian and Gauss-Newton products) / gradient: {fmt_x(r.get('curvature_diagnostics_over_gradient'), 0)}.",
    ]
    if "newton_over_newton_lowrank" in r:
        k = p["steps"]["newton" + LOW_RANK_SUFFIX].get("max_rank")
        L.append(
            f"Low-rank path (max_rank {k}) speed-up over the dense one: newton "
            f"{fmt_x(r.get('newton_over_newton_lowrank'), 1)}, newton_damped "
            f"{fmt_x(r.get('newton_damped_over_newton_damped_lowrank'), 2)}."
        )
    return L + [""]


def _epoch_md(e: dict) -> list[str]:
    L = [
        f"## 2. One epoch ({e['steps']} steps): real trainer (W&B offline + CSV) vs jitted lax.scan yardstick",
        "",
        (
            "Yardstick: `lax.scan` over the epoch's batches gathered beforehand (pure step math); "
            "yardstick + gather: each step gathers its batch from the on-device dataset, as the trainer does."
        ),
        "",
        (
            "| method | trainer train_time_s | yardstick | trainer / yardstick (goal ≤ 1.2) | yardstick + gather "
            "| trainer / (yardstick + gather) | trainer's chunk fn, 1 call | same, in chunks | mean CG iterations |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, v in e["methods"].items():
        b = v.get("breakdown", {})
        one, chunks = med(b.get("trainer_chunk_fn_one_call")), med(b.get("trainer_chunk_fn_in_chunks"))
        L.append(
            f"| {m} | {v['trainer_median_s']:.3f} s | {med(v['yardstick']):.3f} s | {v['ratio']:.2f} | "
            f"{med(v['yardstick_gather']):.3f} s | {v['ratio_vs_yardstick_gather']:.2f} | "
            + (f"{one:.3f} s | {chunks:.3f} s |" if one and chunks else "– | – |")
            + (f" {v['cg_iterations_mean']:.1f} |" if "cg_iterations_mean" in v else " – |")
        )
    L += [
        "",
        "Trainer and yardstick produce the same per-step losses (max abs difference "
        + ", ".join(
            f"{m} {v['same_losses_max_abs_diff']:.1e}"
            for m, v in e["methods"].items()
            if v.get("same_losses_max_abs_diff") is not None
        )
        + ").",
    ]
    return L + [""]


def _baseline_md(b: dict) -> list[str]:
    L = [
        "## 3. Speed-up of our trainer over the straightforward implementation",
        "",
        b["description"],
        "",
        "| method | width | baseline / step | ours / step | speed-up |",
        "|---|---|---|---|---|",
    ]
    for m, v in b["methods"].items():
        for var in ("jit", "eager"):
            if var not in v:
                continue
            if "note" in v:  # exact Newton: medians of per-step times
                base_t = v[var]["median_step_s"]
                ours_t = v["ours"].get("median_step_s", v["ours"]["per_step_s"])
            else:
                base_t, ours_t = v[var]["per_step_s"], v["ours"]["per_step_s"]
            n = v[var]["steps"]
            L.append(
                f"| {m} ({var}, {n} step{'s' if n != 1 else ''}) | {v['hidden'][0]} | "
                f"{base_t * 1e3:.3f} ms | {ours_t * 1e3:.3f} ms | {v[var]['speedup']:.1f}× |"
            )
    for m, v in b["methods"].items():
        if "note" in v:
            L.append(f"\n{m}: {v['note']}.")
    return L + [""]


def _scaling_md(sc: dict, plot: str | None) -> list[str]:
    L = [
        "## 4. Scaling: step time (width × batch)",
        "",
        f"![scaling]({plot})",
        "",
        "| hidden | batch | params | " + " | ".join(sc["methods"]) + " |",
        "|---|---|---|" + "---|" * len(sc["methods"]),
    ]
    for hidden in sc["widths"]:
        for batch in sc["batches"]:
            rs = {r["method"]: r for r in sc["rows"] if r["hidden"] == hidden and r["batch"] == batch}
            if not rs:
                continue
            n = next(iter(rs.values()))["param_count"]
            L.append(
                f"| {hidden} | {batch} | {n} | "
                + " | ".join(fmt_t(rs[m]["step"]) if m in rs else "–" for m in sc["methods"])
                + " |"
            )
    if sc["notes"]:
        L += ["", "Skipped:"] + [f"- {nt}" for nt in sc["notes"]]
    return L + [""]


def contention(res: dict) -> dict[str, dict]:
    return {k: v for k, v in res.get("cpu_contention", {}).items() if isinstance(v, dict) and "foreign_cpu_share" in v}


def write_markdown(res: dict, path: Path) -> None:
    """The human-readable report of a result dict (as written to the JSON)."""
    env = res["environment"]
    L: list[str] = [f"# Benchmark on `{res['device']}` ({env.get('device_kind')})", ""]
    L.append(
        f"{'Quick smoke run' if res['quick'] else 'Full run'}, {env['started_at']}, "
        f"git {env.get('git_commit')}, jax {env['packages'].get('jax')}, "
        f"{os.cpu_count()} CPU threads; load average at start {res['load_average']['start']}, "
        f"at end {res['load_average']['end']}. Median of repeats; compilation and one warm-up "
        "call excluded. Total wall-clock "
        + f"{res['wall_s']['total']:.0f} s."
        + (f" XLA_FLAGS: `{env['xla_flags']}`." if env.get("xla_flags") else "")
    )
    L.append("")
    if res.get("parts"):
        L += _parts_md(res["parts"], res["settings"])
    if res.get("epoch"):
        L += _epoch_md(res["epoch"])
    if res.get("baseline"):
        L += _baseline_md(res["baseline"])
    if res.get("scaling"):
        L += _scaling_md(res["scaling"], res["files"].get("plot"))
    L += ["## Wall-clock per section", "", " · ".join(f"{k} {v:.0f} s" for k, v in res["wall_s"].items()), ""]
    cc = contention(res)
    if cc:
        L += [
            "CPU used by other processes during each section (share of all cores; > 0.1 disturbs the timings): "
            + " · ".join(f"{k} {v['foreign_cpu_share']:.2f}" for k, v in cc.items()),
            "",
        ]
    path.write_text("\n".join(L))


def plot_scaling(scaling: dict, path: Path, device: str) -> None:
    """Log-log step time against parameter count, one line per method and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = labels(scaling["methods"])
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    fig, ax = plt.subplots(figsize=(11, 6))
    for mi, m in enumerate(scaling["methods"]):
        rows = [r for r in scaling["rows"] if r["method"] == m]
        for bi, batch in enumerate(scaling["batches"]):
            done = [r for r in rows if r["batch"] == batch and med(r["step"]) is not None]
            if not done:
                continue
            xs, ys = zip(*sorted((r["param_count"], med(r["step"])) for r in done))
            ks = sorted({r["step"]["max_rank"] for r in done if r["step"].get("max_rank")})
            rank = f" (max_rank {', '.join(map(str, ks))})" if ks else ""
            ax.plot(
                xs,
                ys,
                linestyle=styles[bi % 4],
                marker=markers[bi % 4],
                color=f"C{mi % 10}",
                label=f"{names[m]}{rank}, batch {batch}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (784-h-10 MLP, h = " + ", ".join(map(str, scaling["widths"])) + ")")
    ax.set_ylabel("time per optimizer step (s)")
    ax.set_title(f"Step time vs parameter count ({device}; float32 params, float64 solves)")
    ax.grid(True, which="both", alpha=0.3)
    not_run: dict[str, int] = {}
    for r in scaling["rows"]:
        if med(r["step"]) is None:
            not_run[r["method"]] = min(r["param_count"], not_run.get(r["method"], r["param_count"]))
    if not_run:
        ax.text(
            0.99,
            0.01,
            "; ".join(f"{names[m]} not run for n ≥ {n:,}" for m, n in not_run.items()) + " (memory / time)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
        )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_summary(res: dict) -> None:
    """A few lines of the main numbers on stdout."""
    print("\n=== bench summary (" + res["device"] + ") ===")
    p = res.get("parts")
    if p:
        r, pt = p["ratios"], p["parts"]
        print(
            f"paper size n={p['param_count']}: gradient {fmt_t(pt['gradient'])}, HVP {fmt_t(pt['hvp'])} "
            f"({fmt_x(r['hvp_over_gradient'])}), GGN {fmt_t(pt['ggn_vp'])} ({fmt_x(r['ggn_over_gradient'])})"
        )
        print(
            f"  dense Hessian {fmt_t(pt['dense_hessian'])}, jax.hessian {fmt_t(pt['jax_hessian'])}, "
            f"Cholesky {fmt_t(pt['cholesky'])}, eigh {fmt_t(pt['eigh'])}"
        )
        for m in cg_methods(p):
            c = p["cg"][m]
            print(
                f"  CG {m}: {c['init']['iterations_median']:.0f} it @init, {c['trained']['iterations_median']:.0f} it "
                f"after SGD; {c['init']['time_per_iteration_s'] * 1e3:.3f} ms/it"
            )
        print(
            "  steps (first; mean over consecutive steps where timed): "
            + ", ".join(
                f"{m} {fmt_t(t)}"
                + (f"; {fmt_t(t['run'])}" if isinstance(t, dict) and "run" in t else "")
                + f" ({fmt_x(r['step_over_gradient'].get(m), 1)} grad)"
                for m, t in p["steps"].items()
            )
        )
        print(
            f"  damped Newton step / (Hessian + Cholesky) = {fmt_x(r['newton_damped_step_over_hessian_plus_cholesky'])}"
        )
    e = res.get("epoch")
    if e:
        print(
            "epoch trainer/yardstick: "
            + ", ".join(f"{m} {v['ratio']:.2f}" for m, v in e["methods"].items())
            + "; vs yardstick with on-device gather: "
            + ", ".join(f"{m} {v['ratio_vs_yardstick_gather']:.2f}" for m, v in e["methods"].items())
        )
    b = res.get("baseline")
    if b:
        print(
            "speed-up over straightforward baseline: "
            + ", ".join(
                f"{m} {v['speedup']:.1f}×" + (f" (eager cg {v['eager']['speedup']:.0f}×)" if "eager" in v else "")
                for m, v in b["methods"].items()
            )
        )
    print("files: " + ", ".join(str(v) for v in res["files"].values()))
    print("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["wall_s"].items()))
    cc = contention(res)
    if cc:
        print("other processes' CPU share: " + ", ".join(f"{k} {v['foreign_cpu_share']:.2f}" for k, v in cc.items()))
