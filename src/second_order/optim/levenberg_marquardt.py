"""Levenberg–Marquardt adaptation of the damping λ of a CG step (Martens 2010, §4.1).

After the step ``s`` is taken, the reduction ratio

    ρ = (f(w + s) − f(w)) / q(s),   q(s) = gᵀs + ½ sᵀC s   [+ ½ λ ‖s‖²]

compares the actual change of the mini-batch loss with the change predicted by the
quadratic model, and λ is updated by Martens's rule (with Moré's 1978 constants
as he uses them)::

    λ ← 3/2 · λ   if ρ < 1/4 (the model was too optimistic), or ρ is not finite,
    λ ← 2/3 · λ   if ρ > 3/4 (the model was good: trust it further),
    λ kept        after a zero step (q = 0 and no change of the loss: g = 0 or η = 0),

then bounded below by ``min_damping``.  Martens (2010), "Deep learning via
Hessian-free optimization", ICML; Martens & Sutskever (2012), "Training deep and
recurrent networks with Hessian-free optimization", §8.  By default ``C`` is the
undamped curvature (as kfac-jax does); ``lm_model="damped"`` also counts the
damping term ½λ‖s‖² in ``q``.

A step whose model predicts no decrease (``q(s) ≥ 0``) is also counted as a
failure: ρ carries no information about λ then (a predicted increase that happens
would otherwise read as ρ ≈ 1 and *shrink* λ).  For a CG iterate started at 0,
``gᵀd = dᵀ(C + λI)d`` and ``q(−η d) ≤ η(η/2 − 1) dᵀ(C + λI)d < 0`` whenever
``0 < η < 2`` and ``C + λI`` is positive along ``d``, so this only matters for large
learning rates, indefinite Hessians or warm starts.

ρ compares the loss at the step this transformation returns with the model of that
step, built from the gradient it was given: a transformation that rescales either
(``optax.clip_by_global_norm`` before it, a scaling after it) makes ρ measure another
step, and λ adapts to the wrong one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

PyTree = Any

#: Values of ``damping_adaptation`` (``None``: λ fixed, the default).
LEVENBERG_MARQUARDT = "levenberg_marquardt"
DAMPING_ADAPTATIONS = (None, LEVENBERG_MARQUARDT)
#: Values of ``lm_model``: which quadratic model ``q`` the ratio ρ divides by.
UNDAMPED, DAMPED = "undamped", "damped"
LM_MODELS = (UNDAMPED, DAMPED)
#: Default lower bound of the adapted λ.
DEFAULT_MIN_DAMPING = 1e-6
#: Martens's (2010) thresholds on ρ and factors on λ.
RHO_LOW, RHO_HIGH = 0.25, 0.75
GROW, SHRINK = 1.5, 2.0 / 3.0


def quadratic_model(g: PyTree, d: PyTree, cd: PyTree, learning_rate: jax.Array, damping: jax.Array | None) -> jax.Array:
    """``q(s)`` at ``s = −η d``: ``−η gᵀd + ½ η² dᵀCd`` (``+ ½ η² λ ‖d‖²`` when ``damping`` is given).

    ``cd`` is ``C d``.  All three are pytrees in the solve dtype; the result is a
    scalar in that dtype.
    """
    eta = jnp.asarray(learning_rate, otu.tree_vdot(g, d).dtype)
    curvature = otu.tree_vdot(d, cd)
    if damping is not None:
        curvature = curvature + damping * otu.tree_vdot(d, d)
    return -eta * otu.tree_vdot(g, d) + 0.5 * eta**2 * curvature


def reduction_ratio(f_new: jax.Array, f_old: jax.Array, q: jax.Array) -> jax.Array:
    """ρ = (f(w + s) − f(w)) / q(s); with ``q = 0``: 1 when the loss did not change either (a
    zero step, e.g. ``g = 0`` or ``η = 0``: the model was exact), else ``−inf`` (no 0/0 NaN
    to stop ``jax_debug_nans``); NaN or ±inf when a loss is not finite."""
    idle = (q == 0) & (f_new == f_old)
    return jnp.where(q == 0, jnp.where(idle, 1.0, -jnp.inf), (f_new - f_old) / jnp.where(q == 0, 1.0, q))


def adapt_damping(damping: jax.Array, rho: jax.Array, q: jax.Array, min_damping: Any) -> jax.Array:
    """Martens's rule: ×3/2 if ρ < 1/4, ρ not finite or q ≥ 0; ×2/3 if ρ > 3/4; then ≥ ``min_damping``.

    A zero step (``q = 0`` and ρ = 1, :func:`reduction_ratio`) tells nothing about λ: it is
    kept (else a warm-up from η = 0 or a stationary point would grow λ by 3/2 every step,
    to ``inf`` in float32 after about 220 steps, where ×2/3 no longer brings it back).
    """
    idle = (q == 0) & (rho == 1.0)
    fail = ~idle & (~jnp.isfinite(rho) | (rho < RHO_LOW) | ~(q < 0))
    good = ~idle & ~fail & (rho > RHO_HIGH)
    new = jnp.where(fail, damping * GROW, jnp.where(good, damping * SHRINK, damping))
    return jnp.maximum(new, jnp.asarray(min_damping, damping.dtype))
