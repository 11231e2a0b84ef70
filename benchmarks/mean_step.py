"""The mean step: many consecutive optimizer steps (or gradients) timed as one ``lax.scan``.

A single step from the initial state is a method's first step; the mean step includes its
periodic work at its rate (K-FAC's factor inversions every ``inverse_every`` steps,
Shampoo's roots every ``precondition_every``) and, like the trainer's chunks, pays the
dispatch once.  Each method's run is timed round-robin with a run of as many gradients on
the same batches (:func:`benchmarks.timing.measure_group`), so that its ratio, the cost in
gradient-equivalents, is not skewed by drifts between separately timed functions.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.problem import Problem
from benchmarks.settings import Settings
from benchmarks.timing import measure_group, sec, skipped


def scan_fn(prob: Problem, tx: Any) -> Callable:
    """(params, opt_state, xs, ys) → per-step outputs of ``len(xs)`` steps of ``tx`` in one ``lax.scan``.

    ``tx=None``: the gradient at ``params`` on each batch (its squared norm is returned with
    the loss, which keeps the whole gradient live).
    """
    if tx is None:
        grad_fn = prob.grad_fn()

        def body(carry, xy):
            loss, g = grad_fn(carry[0], *xy)
            return carry, loss + sum(jnp.vdot(v, v) for v in jax.tree_util.tree_leaves(g))

    else:
        step = prob.step_fn(tx)

        def body(carry, xy):
            p, st, loss, _ = step(*carry, *xy)
            return (p, st), loss

    def run(params, opt_state, xs, ys):
        return jax.lax.scan(body, (params, opt_state), (xs, ys))[1]

    return run


def consecutive(prob: Problem, tx: Any, s: Settings) -> dict:
    """``s.run_steps`` steps of ``tx`` from the initial state over the first epoch's batches, against as many
    gradients, round-robin.

    Per-step times = median call / ``run_steps``: ``per_step_s`` (the method; also ``median_s``) and
    ``gradient_per_step_s``; ``final_loss`` is the last step's loss (None if not finite).
    """
    idx = prob.perm(0)[: s.run_steps]
    xs, ys = prob.x_all[idx], prob.y_all[idx]
    group = measure_group(
        {
            "gradient": (scan_fn(prob, None), (prob.params, (), xs, ys)),
            "steps": (scan_fn(prob, tx), (prob.params, tx.init(prob.params), xs, ys)),
        },
        repeats=s.repeats,
        min_total_s=s.min_total_s,
        keep_output=True,
    )
    losses = group["steps"]["_output"]
    per_step = sec(group["steps"]) / s.run_steps
    return {
        "median_s": per_step,
        "per_step_s": per_step,
        "gradient_per_step_s": sec(group["gradient"]) / s.run_steps,
        "steps": s.run_steps,
        "compile_s": group["steps"]["compile_s"],
        "calls": group["steps"]["n"],
        "final_loss": float(losses[-1]) if bool(jnp.isfinite(losses[-1])) else None,
    }


def gradient_summary(runs: list[dict], s: Settings) -> dict:
    """The gradient's mean step over every method's paired timing (their median), for the parts table."""
    values = [r["gradient_per_step_s"] for r in runs]
    if not values:
        return skipped("no method's mean step was timed")
    return {"median_s": statistics.median(values), "per_step_s": statistics.median(values), "steps": s.run_steps,
            "pairs": len(values), "min_s": min(values), "max_s": max(values)}  # fmt: skip
