"""Hessian-free Newton (Martens 2010)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from second_order.optim.base import cg_transformation, require

#: Default CG cap of :func:`hessian_free` and :func:`gauss_newton` (Martens 2010 ran up to 250).
DEFAULT_MAXITER = 250


def hessian_free(
    learning_rate: optax.ScalarOrSchedule,
    damping: float,
    maxiter: int | None = DEFAULT_MAXITER,
    tol: float = 1e-5,
    *,
    solve_dtype: Any | None = None,
    product_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free Newton: ``w ← w − η d`` with ``(H + λI) d = g`` solved by CG.

    ``H v`` is the exact Hessian-vector product of the mini-batch loss (Pearlmutter
    1994, forward-over-reverse); ``H`` is never formed.  CG starts at 0 and stops at
    relative residual ``tol`` or after ``maxiter`` iterations.  Default ``maxiter =
    250`` (Martens 2010 capped CG at 250 iterations), which bounds the work of one
    step; ``maxiter=None`` is ``10·n``, the ``jax.scipy.sparse.linalg.cg`` default
    that the paper used (79,600 products at n = 7,960, in one uninterruptible loop).
    ``H + λI`` may be indefinite for small λ; CG does not stop there (as the paper's
    CG): the diagnostics ``cg_negative_curvature`` (1 when some pᵀ(H+λI)p ≤ 0 was met
    this step) and ``cg_min_curvature`` (min pᵀ(H+λI)p / pᵀp) show it.
    Martens (2010), "Deep learning via Hessian-free optimization", ICML.

    ``update(grads, state, params, value_fn=...)`` with ``value_fn: params → scalar
    mini-batch loss``.  Precision: ``grads`` is the caller's gradient (usually
    computed in the parameters' dtype), only cast to ``solve_dtype``; ``H v`` runs in
    ``product_dtype`` (``None``: ``solve_dtype``) — ∇L is linearised at the parameters
    cast to ``product_dtype``, each CG vector is cast to ``product_dtype`` and ``H v``
    cast back; CG (λ v, dots, iterates) runs in ``solve_dtype`` (default float64 when
    ``jax_enable_x64`` is on, else float32); the update has the parameters' dtype.
    The paper's setting: ``product_dtype=float32``, ``solve_dtype=float64``.

    ``learning_rate``, ``damping``, ``tol`` and ``maxiter`` may be traced, e.g. by
    ``optax.inject_hyperparams(hessian_free)(learning_rate=0.5, damping=32.0)`` (pass
    dtypes as strings, or in ``static_args``: a dtype class is callable and would be
    taken for a schedule).  Diagnostics: ``cg_iterations``, ``cg_residual``
    (‖r‖/‖g‖), ``cg_min_curvature``, ``cg_negative_curvature``, ``grad_norm`` (‖g‖),
    ``step_norm`` (‖d‖).
    """

    def make_matvec(params, extra_args):
        (value_fn,) = require(extra_args, "hessian_free", "value_fn")
        # Linearise ∇L once per step; each CG iteration then costs one tangent pass.
        _, hvp_fn = jax.linearize(jax.grad(value_fn), params)
        return hvp_fn

    return cg_transformation(
        "hessian_free", make_matvec, learning_rate, damping, maxiter, tol, solve_dtype, product_dtype
    )
