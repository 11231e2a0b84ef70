"""Hessian-free generalized Gauss-Newton (Schraudolph 2002; Martens 2010)."""

from __future__ import annotations

from typing import Any

import optax

from second_order.curvature import linearized_ggn_vp
from second_order.optim.base import cg_transformation, require
from second_order.optim.cg_step import CGOptions
from second_order.optim.hessian_free import DEFAULT_MAXITER
from second_order.optim.levenberg_marquardt import DEFAULT_MIN_DAMPING, UNDAMPED


def gauss_newton(
    learning_rate: optax.ScalarOrSchedule,
    damping: float,
    maxiter: int | None = DEFAULT_MAXITER,
    tol: float = 1e-5,
    *,
    damping_adaptation: str | None = None,
    lm_model: str = UNDAMPED,
    min_damping: float = DEFAULT_MIN_DAMPING,
    warm_start: float | None = None,
    progress_tol: float | None = None,
    backtracking: bool = False,
    solve_dtype: Any | None = None,
    product_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free Gauss-Newton: ``w ← w − η d`` with ``(G + λI) d = g`` solved by CG.

    ``G = Jᵀ H_z J`` is the generalized Gauss-Newton matrix: ``J = ∂z/∂w`` the Jacobian
    of the model outputs and ``H_z = ∇²_z ℓ`` the Hessian of the loss in output space
    (Schraudolph 2002, "Fast curvature matrix-vector products for second-order
    gradient descent"; Martens 2010).  ``G v`` is computed as jvp → output-space
    Hessian-vector product → vjp; ``G`` is PSD for convex ℓ, so CG is well posed for
    any λ > 0.  CG as in :func:`hessian_free`: default ``maxiter = 250`` (Martens
    2010), ``maxiter=None`` is ``10·n`` (the jax/scipy default the paper used).

    ``update(grads, state, params, predict_fn=..., output_loss_fn=...)`` with
    ``predict_fn: params → outputs`` and ``output_loss_fn: outputs → scalar loss``.
    Precision: ``grads`` is the caller's gradient, only cast to ``solve_dtype``;
    ``G v`` (J, H_z and Jᵀ, linearised at the parameters cast to ``product_dtype``,
    ``None``: ``solve_dtype``) runs in ``product_dtype`` on vectors cast to it, the
    result cast back; CG runs in ``solve_dtype`` (default float64 when
    ``jax_enable_x64`` is on, else float32); the update has the parameters' dtype.
    The paper's setting: ``product_dtype=float64``, ``solve_dtype=float64``.
    ``optax.inject_hyperparams`` and diagnostics as for :func:`hessian_free`.

    Martens's options (``damping_adaptation``, ``lm_model``, ``min_damping``,
    ``warm_start``, ``progress_tol``, ``backtracking``) as for :func:`hessian_free`, all
    off by default, with ``G`` in place of ``H`` (the undamped model
    ``q(s) = gᵀs + ½ sᵀGs`` is Martens's own choice for the Gauss-Newton matrix).  The
    Levenberg–Marquardt ratio and backtracking evaluate the loss, so they also need
    ``value_fn``: ``update(grads, state, params, value_fn=..., predict_fn=...,
    output_loss_fn=...)``.  ``configs/optimizer/gauss_newton_lm.yaml`` turns them on.
    """

    def make_matvec(params, extra_args):
        predict_fn, output_loss_fn = require(extra_args, "gauss_newton", "predict_fn", "output_loss_fn", params=params)
        return linearized_ggn_vp(predict_fn, output_loss_fn, params)

    options = CGOptions(damping_adaptation, lm_model, min_damping, warm_start, progress_tol, backtracking)
    return cg_transformation(
        "gauss_newton", make_matvec, learning_rate, damping, maxiter, tol, solve_dtype, product_dtype, options
    )
