"""Hessian-free Newton (Martens 2010)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from second_order.optim.base import cg_transformation, require


def hessian_free(
    learning_rate: optax.ScalarOrSchedule,
    damping: float,
    maxiter: int | None = None,
    tol: float = 1e-5,
    *,
    solve_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free Newton: ``w ← w − η d`` with ``(H + λI) d = g`` solved by CG.

    ``H v`` is the exact Hessian-vector product of the mini-batch loss (Pearlmutter
    1994, forward-over-reverse); ``H`` is never formed.  CG starts at 0 and stops at
    relative residual ``tol`` or after ``maxiter`` iterations (default ``10·n``), the
    defaults of ``jax.scipy.sparse.linalg.cg`` used by the paper.  ``H + λI`` may be
    indefinite for small λ; the diagnostic ``cg_min_curvature`` (< 0) shows it.
    Martens (2010), "Deep learning via Hessian-free optimization", ICML.

    ``update(grads, state, params, value_fn=...)`` with ``value_fn: params → scalar
    mini-batch loss``.  Products and CG run in ``solve_dtype`` (default float64 when
    ``jax_enable_x64`` is on, else float32); the update has the parameters' dtype.
    Diagnostics: ``cg_iterations``, ``cg_residual`` (‖r‖/‖g‖), ``cg_min_curvature``,
    ``grad_norm``, ``step_norm`` (‖d‖).
    """

    def make_matvec(params, extra_args):
        (value_fn,) = require(extra_args, "hessian_free", "value_fn")
        # Linearise ∇L once per step; each CG iteration then costs one tangent pass.
        _, hvp_fn = jax.linearize(jax.grad(value_fn), params)
        return hvp_fn

    return cg_transformation("hessian_free", make_matvec, learning_rate, damping, maxiter, tol, solve_dtype)
