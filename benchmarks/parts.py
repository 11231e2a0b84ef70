"""Section 1, ``parts``: per-step parts and whole steps at the paper's size."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks.mean_step import consecutive, gradient_summary
from benchmarks.methods import (
    FAST,
    RUN_QUICK,
    SCALING,
    Method,
    low_rank_bound,
    resolve_max_rank,
    subset,
)
from benchmarks.problem import Problem, diag_summary
from benchmarks.settings import Settings
from benchmarks.timing import (
    block,
    log,
    measure,
    measure_group,
    med,
    now,
    ratio,
    sec,
    skipped,
)
from second_order import curvature
from second_order.optim import collect_diagnostics


def section_parts(data: Any, s: Settings, methods: Mapping[str, Method]) -> dict:
    """Gradient, curvature products, CG solves, dense Hessian pieces and one step per method."""
    prob = Problem(data, s.part_hidden, s.batch, s.num_classes)
    n = prob.n
    log(f"parts: hidden={s.part_hidden} batch={s.batch} n={n}")
    x, y = prob.batch_xy(0, 0)
    p32 = prob.params
    p64 = curvature.tree_cast(p32, jnp.float64)
    flat64, unravel = ravel_pytree(p64)
    v64 = unravel(jax.random.normal(jax.random.PRNGKey(1), flat64.shape, jnp.float64))
    parts: dict[str, Any] = {}
    R = s.repeats
    grad_fn = prob.grad_fn()

    def hvp_fn(p, v, x, y):
        return curvature.hvp(prob.fns(x, y)[0], p, v)

    def ggn_fn(p, v, x, y):
        _, pf, of = prob.fns(x, y)
        return curvature.ggn_vp(pf, of, p, v)

    parts.update(
        measure_group(
            {
                "dispatch_overhead": (lambda a: a + 1, (jnp.float32(0),)),
                "gradient": (grad_fn, (p32, x, y)),
                "gradient_f64": (grad_fn, (p64, x, y)),
                "hvp": (hvp_fn, (p64, v64, x, y)),
                "ggn_vp": (ggn_fn, (p64, v64, x, y)),
            },
            repeats=R,
            min_total_s=s.min_total_s * 3,
        )
    )
    log(
        f"  gradient {sec(parts['gradient']) * 1e3:.3f} ms, hvp {sec(parts['hvp']) * 1e3:.3f} ms, "
        f"ggn {sec(parts['ggn_vp']) * 1e3:.3f} ms"
    )

    # -- one in-loop curvature measurement (diagnostics=curvature, default sizes), off the time axis in training.
    parts["curvature_diagnostics"], products = curvature_call(prob, p32, s)
    log(f"  curvature diagnostics call {sec(parts['curvature_diagnostics']) * 1e3:.1f} ms ({products} products)")

    # -- CG solves (the optimizers' own update, given the gradient) at init and after SGD.
    trained = train_sgd(prob, methods["sgd"], s.sgd_steps)
    cg = {}
    for key, m in methods.items():
        if "cg_iterations" not in prob.diagnostic_names(m.tx()):
            continue
        cg[key] = cg_stats(prob, m, {"init": (p32, 0), "trained": (trained["params"], 1)}, s)
        for label, c in cg[key].items():
            log(f"  CG {key} @{label}: {c['iterations_median']} it, {c['time_per_iteration_s'] * 1e3:.3f} ms/it")
    cg_info = {"sgd_steps_before_trained": s.sgd_steps, "sgd_loss_after": trained["loss"], **cg}

    # -- dense Hessian, Cholesky (of H + λI, λ the dense damped methods' damping), eigh.
    def dense_fn(p, x, y):
        return curvature.dense_hessian(prob.fns(x, y)[0], p)

    def jax_hessian_fn(w, x, y):
        vf = prob.fns(x, y)[0]
        return jax.hessian(lambda w: vf(unravel(w)))(w)

    parts["dense_hessian"], h = measure(
        dense_fn, p64, x, y, repeats=R, min_total_s=s.min_total_s, budget_s=s.slow_budget_s
    )
    log(f"  dense_hessian {sec(parts['dense_hessian']):.3f} s")
    parts["jax_hessian"], h2 = measure(
        jax_hessian_fn, flat64, x, y, repeats=R, min_total_s=s.min_total_s, budget_s=s.slow_budget_s
    )
    log(f"  jax.hessian {sec(parts['jax_hessian']):.3f} s")
    hessian_check = {
        "max_abs_diff_dense_vs_jax_hessian": float(jnp.max(jnp.abs(h - h2))),
        "max_abs_entry": float(jnp.max(jnp.abs(h))),
    }
    del h2
    lam = max([m.damping for m in methods.values() if m.dense_hessian] or [0.0])
    a = h + lam * jnp.eye(n, dtype=h.dtype)
    parts["cholesky"], _ = measure(
        jnp.linalg.cholesky, a, repeats=R, min_total_s=s.min_total_s, budget_s=s.slow_budget_s
    )
    log(f"  cholesky(H+{lam:g}I) {sec(parts['cholesky']):.3f} s")
    del a
    if s.eigh:
        log("  eigh(H): one call, expect minutes on a CPU ...")
        parts["eigh"], (w, _) = measure(jnp.linalg.eigh, h, repeats=1, min_total_s=0.0, once=True)
        w = np.asarray(w)
        hessian_check.update(
            min_eigenvalue=float(w[0]),
            max_eigenvalue=float(w[-1]),
            numerical_rank=int(np.sum(np.abs(w) > 10 * n * np.finfo(np.float64).eps * np.abs(w).max())),
        )
        log(f"  eigh(H) {sec(parts['eigh']):.1f} s")
    else:
        parts["eigh"] = skipped("--quick" if s.quick else ("--skip-slow" if s.skip_slow else "--no-eigh"))
    del h

    steps, fast = whole_steps(prob, s, methods, parts, grad_fn, (x, y))
    g32, g64 = med(parts["gradient"]), med(parts["gradient_f64"])
    ratios = {
        "hvp_over_gradient": ratio(med(parts["hvp"]), g32),
        "hvp_over_gradient_f64": ratio(med(parts["hvp"]), g64),
        "ggn_over_gradient": ratio(med(parts["ggn_vp"]), g32),
        "ggn_over_gradient_f64": ratio(med(parts["ggn_vp"]), g64),
        # gradient-equivalents: a method's mean step / the gradient's timed with it (dense Newton: its
        # first step / the median of those gradients)
        "step_over_gradient": {
            m: ratio(t["run"]["per_step_s"], t["run"]["gradient_per_step_s"])
            if "run" in t
            else ratio(med(t), med(parts["gradient_consecutive"]))
            for m, t in steps.items()
        },
        "first_step_over_gradient": {
            m: ratio(med(t), med(parts["gradient_with_steps"]) if m in fast else g32) for m, t in steps.items()
        },
        "newton_damped_step_over_hessian_plus_cholesky": ratio(
            med(steps.get("newton_damped")), sec(parts["dense_hessian"]) + sec(parts["cholesky"])
        ),
        "jax_hessian_over_dense_hessian": ratio(med(parts["jax_hessian"]), med(parts["dense_hessian"])),
        "curvature_diagnostics_over_gradient": ratio(med(parts["curvature_diagnostics"]), g32),
        "curvature_diagnostics_products": products,
        "cg_iteration_over_hvp": {
            m: ratio(
                cg[m]["init"]["time_per_iteration_s"], med(parts["hvp"] if m == "hessian_free" else parts["ggn_vp"])
            )
            for m in cg
        },
    }
    if "newton_lowrank" in steps:
        ratios["newton_lowrank_over_newton_damped"] = ratio(
            med(steps["newton_lowrank"]), med(steps.get("newton_damped"))
        )
        ratios["newton_over_newton_lowrank"] = ratio(med(steps.get("newton")), med(steps["newton_lowrank"]))
        ratios["newton_damped_over_newton_damped_lowrank"] = ratio(
            med(steps.get("newton_damped")), med(steps.get("newton_damped_lowrank"))
        )
    return {
        "hidden": [s.part_hidden],
        "batch": s.batch,
        "param_count": n,
        "param_dtype": "float32",
        "solve_dtype": "float64",
        "x64": bool(jax.config.jax_enable_x64),  # type: ignore[attr-defined]
        "low_rank_available": any(m.low_rank for m in methods.values()),
        "parts": parts,
        "cg": cg_info,
        "steps": steps,
        "ratios": ratios,
        "hessian_check": hessian_check,
    }


def whole_steps(
    prob: Problem,
    s: Settings,
    methods: Mapping[str, Method],
    parts: dict,
    grad_fn: Any,
    xy: tuple[jax.Array, jax.Array],
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """One whole optimizer step per method, and the mean step (``consecutive``) of those under the
    budget (adds ``parts['gradient_with_steps']`` and ``parts['gradient_consecutive']``); (steps, fast keys)."""
    x, y = xy
    p32, n = prob.params, prob.n
    steps: dict[str, Any] = {}
    # Fast steps: timed round-robin together with the gradient, so that step/gradient is not skewed
    # by drifts between separately timed functions.
    fast = subset(methods, FAST)
    txs = {k: m.tx() for k, m in fast.items()}
    group = measure_group(
        {
            "gradient": (grad_fn, (p32, x, y)),
            **{k: (prob.step_fn(tx), (p32, tx.init(p32), x, y)) for k, tx in txs.items()},
        },
        repeats=s.repeats,
        min_total_s=s.min_total_s * 3,
    )
    parts["gradient_with_steps"] = group.pop("gradient")
    for k, tx in txs.items():
        out = jax.jit(prob.step_fn(tx))(p32, tx.init(p32), x, y)
        steps[k] = {**group[k], "diagnostics": diag_summary(out[3])}
        log(f"  step {k}: {sec(steps[k]) * 1e3:.3f} ms  {steps[k]['diagnostics']}")
    parts_sum = ("gradient", "dense_hessian", "cholesky", "eigh")
    for key, m in methods.items():
        if key in fast:
            continue
        max_rank = None
        if m.low_rank:
            max_rank = resolve_max_rank(
                s.low_rank_max_rank, m.configured_max_rank, low_rank_bound(s.batch, s.part_hidden, s.num_classes)
            )
            if max_rank >= n or (s.quick and key not in SCALING):
                continue
        undamped_dense = m.dense_hessian and m.damping == 0  # Cholesky fails: the eigh path
        if undamped_dense:
            pred = sum(sec(parts[k]) for k in parts_sum) if med(parts["eigh"]) is not None else None
            if not s.newton_step and (pred is None or pred > s.cap_s / 2):
                steps[key] = estimate_from_parts(parts, parts_sum)
                continue
        tx = m.tx(max_rank)
        t, out = measure(
            prob.step_fn(tx),
            p32,
            tx.init(p32),
            x,
            y,
            repeats=s.repeats,
            min_total_s=s.min_total_s,
            budget_s=s.slow_budget_s,
            once=undamped_dense,
        )
        t["diagnostics"] = diag_summary(out[3])
        if max_rank:
            t["max_rank"] = max_rank
        steps[key] = t
        log(f"  step {key}: {sec(t) * 1e3:.3f} ms  {t['diagnostics']}")
    # The mean step: consecutive steps in one scan, round-robin with as many gradients in one scan.
    for key, m in methods.items():
        timed = steps.get(key, {})
        if med(timed) is None or timed.get("single_run") or (s.quick and key not in RUN_QUICK):
            continue
        # --quick times its few RUN_QUICK methods whatever their first step took (on a loaded
        # machine that can exceed the budget), so that its report always has them.
        if s.quick or sec(timed) * s.run_steps <= s.slow_budget_s:
            run = timed["run"] = consecutive(prob, m.tx(timed.get("max_rank")), s)
            log(
                f"  {s.run_steps} steps {key}: {run['per_step_s'] * 1e3:.3f} ms per step "
                f"(gradient {run['gradient_per_step_s'] * 1e3:.3f} ms)"
            )
    parts["gradient_consecutive"] = gradient_summary([t["run"] for t in steps.values() if "run" in t], s)
    return steps, tuple(fast)


def estimate_from_parts(parts: dict, keys: tuple[str, ...]) -> dict:
    """The undamped dense Newton step, not run: the sum of its parts, when they were all timed."""
    if med(parts["eigh"]) is None:
        return skipped("needs the eigh timing (skipped) or --newton-step")
    return {
        "median_s": sum(sec(parts[k]) for k in keys),
        "estimated_from_parts": True,
        "note": "not run (predicted over half the --max-measure-s cap; --newton-step "
        "measures it): gradient + dense_hessian + cholesky (fails: H indefinite) + eigh",
    }


def train_sgd(prob: Problem, sgd: Method, steps: int) -> dict:
    """``steps`` SGD steps from the initial parameters (the trainer's batch order)."""
    tx = sgd.tx()
    step = prob.step_fn(tx)
    idx = prob.perm(0)[:steps]

    @jax.jit
    def run(params, opt_state, idx):
        def body(carry, i):
            p, st = carry
            p, st, loss, _ = step(p, st, prob.x_all[i], prob.y_all[i])
            return (p, st), loss

        (p, _), losses = jax.lax.scan(body, (params, opt_state), idx)
        return p, losses

    params, losses = run(prob.params, tx.init(prob.params), idx)
    return {"params": params, "loss": float(jnp.mean(losses[-50:]))}


def cg_stats(prob: Problem, method: Method, states: dict, s: Settings) -> dict:
    """CG iterations and time of the optimizer's update on ``s.cg_batches`` batches, per parameter state."""
    tx = method.tx()

    def update_only(params, opt_state, grads, x, y):
        value_fn, predict_fn, output_loss_fn = prob.fns(x, y)
        updates, opt_state = tx.update(
            grads, opt_state, params, value_fn=value_fn, predict_fn=predict_fn, output_loss_fn=output_loss_fn
        )
        return updates, collect_diagnostics(opt_state)

    grad_jit = jax.jit(lambda p, x, y: jax.grad(prob.fns(x, y)[0])(p))
    compiled = None
    compile_s = 0.0
    out = {}
    for label, (params, epoch) in states.items():
        st = tx.init(params)
        x0, y0 = prob.batch_xy(epoch, 0)
        if compiled is None:
            t0 = now()
            compiled = jax.jit(update_only).lower(params, st, grad_jit(params, x0, y0), x0, y0).compile()
            compile_s = now() - t0
        iters, times = [], []
        for i in range(s.cg_batches):
            x, y = prob.batch_xy(epoch, i)
            g = block(grad_jit(params, x, y))
            _, d = block(compiled(params, st, g, x, y))  # warm-up
            samples = []
            for _ in range(max(s.repeats, 5)):
                t0 = now()
                block(compiled(params, st, g, x, y))
                samples.append(now() - t0)
            iters.append(int(d["cg_iterations"]))
            times.append(statistics.median(samples))
        per_iter = [t / max(k, 1) for t, k in zip(times, iters)]
        out[label] = {
            "batches": s.cg_batches,
            "epoch_of_batches": epoch,
            "iterations": iters,
            "iterations_median": float(np.median(iters)),
            "solve_s": times,
            "solve_median_s": float(np.median(times)),
            "time_per_iteration_s": float(np.median(per_iter)),
            "compile_s": compile_s,
            "note": "solve = the optimizer's update given the gradient (float64 cast, linearisation, CG, cast back)",
        }
    return out


def curvature_call(prob: Problem, params: Any, s: Settings) -> tuple[dict, int]:
    """One call of the trainer's curvature probe (configs/diagnostics/curvature.yaml's sizes, both matrices).

    Returns (timing, curvature products per call).
    """
    from second_order.suite.config import DiagnosticsConfig
    from second_order.suite.spectrum import SpectrumSizes, make_curvature_probe
    from second_order.suite.training.step import loss_functions

    d = DiagnosticsConfig(name="curvature")
    sizes = SpectrumSizes(d.top_k, d.lanczos_steps, d.trace_probes, d.slq_probes, d.slq_steps, d.negative_tol)
    probe = make_curvature_probe(lambda x, y: loss_functions(prob.apply_fn, x, y), d.matrices, sizes, "float64")
    args = (params, prob.x_all, prob.y_all, prob.perm(0)[0], jax.random.PRNGKey(0))
    timing, _ = measure(probe, *args, repeats=s.repeats, min_total_s=s.min_total_s)
    return timing, sizes.products * len(d.matrices)
