"""The mean step: many consecutive optimizer steps (or gradients) timed as one ``lax.scan``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.problem import Problem
from benchmarks.settings import Settings
from benchmarks.timing import measure, sec


def consecutive(prob: Problem, tx: Any, s: Settings) -> dict:
    """``s.run_steps`` steps of ``tx`` from the initial state over the first epoch's batches, in one ``lax.scan``.

    A single step from the initial state is a method's first step; this is its mean step,
    which includes its periodic work at its rate (K-FAC's factor inversions every
    ``inverse_every`` steps, Shampoo's roots every ``precondition_every``) and, like the
    trainer's chunks, pays the dispatch once.  ``tx=None``: the gradient at the initial
    parameters on the same batches (the denominator of the gradient-equivalents).
    Per-step time (``median_s``, ``per_step_s``) = median call / ``run_steps``.
    """
    idx = prob.perm(0)[: s.run_steps]
    xs, ys = prob.x_all[idx], prob.y_all[idx]
    grad_fn = prob.grad_fn()
    step = prob.step_fn(tx) if tx is not None else None

    def run(params, opt_state, xs, ys):
        def body(carry, xy):
            if step is None:  # the gradient's squared norm keeps the whole gradient live
                loss, g = grad_fn(carry[0], *xy)
                return carry, loss + sum(jnp.vdot(v, v) for v in jax.tree_util.tree_leaves(g))
            p, st, loss, _ = step(*carry, *xy)
            return (p, st), loss

        return jax.lax.scan(body, (params, opt_state), (xs, ys))[1]

    state = tx.init(prob.params) if tx is not None else ()
    t, out = measure(run, prob.params, state, xs, ys, repeats=s.repeats, min_total_s=s.min_total_s)
    per_step = sec(t) / s.run_steps
    return {
        "median_s": per_step,
        "per_step_s": per_step,
        "steps": s.run_steps,
        "compile_s": t["compile_s"],
        "call": t,
        "final_loss": None if tx is None or not bool(jnp.isfinite(out[-1])) else float(out[-1]),
    }
