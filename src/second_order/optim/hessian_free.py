"""Hessian-free Newton (Martens 2010)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from second_order.optim.base import cg_transformation, require
from second_order.optim.cg_step import CGOptions
from second_order.optim.levenberg_marquardt import DEFAULT_MIN_DAMPING, UNDAMPED

#: Default CG cap of :func:`hessian_free` and :func:`gauss_newton` (Martens 2010 ran up to 250).
DEFAULT_MAXITER = 250


def hessian_free(
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
    """Hessian-free Newton: ``w ← w − η d`` with ``(H + λI) d = g`` solved by CG.

    ``H v`` is the exact Hessian-vector product of the mini-batch loss (Pearlmutter
    1994, forward-over-reverse); ``H`` is never formed.  CG starts at 0 and stops at
    relative residual ``tol`` or after ``maxiter`` iterations.  Default ``maxiter =
    250`` (Martens 2010 capped CG at 250 iterations), which bounds the work of one
    step; ``maxiter=None`` is ``10·n``, the ``jax.scipy.sparse.linalg.cg`` default
    that the paper used (79,600 products at n = 7,960, in one uninterruptible loop).
    ``H + λI`` may be indefinite for small λ; CG does not stop there (as the paper's
    CG): the diagnostics ``cg_negative_curvature`` (1 when some pᵀ(H+λI)p ≤ 0 was met
    this step; at exactly zero curvature CG stops without stepping, see
    :func:`second_order.solvers.cg`) and ``cg_min_curvature`` (min pᵀ(H+λI)p / pᵀp) show it.
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

    Martens's (2010) refinements, all off by default so that the default step stays
    plain damped CG from 0 with residual stopping (what the paper's configs
    ``hessian_free.yaml``/``gauss_newton.yaml`` run, bit for bit); Martens uses all of
    them (``configs/optimizer/hessian_free_lm.yaml``):

    * ``damping_adaptation="levenberg_marquardt"``: λ adapts after every step from
      ``ρ = (f(w + s) − f(w)) / q(s)``, ``s = −η d``, ``q(s) = gᵀs + ½ sᵀHs`` on the
      same mini-batch: ×3/2 when ρ < 1/4 or not finite (or q(s) ≥ 0), ×2/3 when ρ > 3/4,
      never below ``min_damping`` (default 1e-6); ``damping`` is the first step's λ
      (see :mod:`second_order.optim.levenberg_marquardt`).  ``lm_model="undamped"``
      (default, as kfac-jax) or ``"damped"`` (q also counts ½λ‖s‖²).  The step is
      always taken.  Extra diagnostics ``damping`` (this step's λ) and ``rho``.  Cost:
      two loss evaluations and one Hessian-vector product per step.
    * ``warm_start`` = ζ (Martens: 0.95): CG starts from ζ times the previous step's
      final CG iterate (kept in the state); one extra product per step.  Off
      (``None``) by default: the paper's CG starts at 0.
    * ``progress_tol`` = ε (Martens: 5e-4): also stop CG at iteration i > k when
      φ(xᵢ) < 0 and (φ(xᵢ) − φ(xᵢ₋ₖ)) / φ(xᵢ) < kε, k = max(10, ⌊i/10⌋), φ the
      quadratic CG minimises (:func:`second_order.solvers.cg`).  Off by default: the
      paper stops on the residual only.
    * ``backtracking``: keep the CG iterates at iterations ⌈1.3ʲ⌉ ≤ ``maxiter`` (about
      20 copies of the parameters for 250) and step along the one found by walking
      back from the last while the mini-batch loss improves (Martens 2010, §4.6);
      one loss evaluation per candidate visited (usually 2–3).  Needs a static
      ``maxiter`` (``static_args=("maxiter",)`` under ``inject_hyperparams``).
      Extra diagnostic ``backtrack_iteration``.  Off by default: the paper takes the
      last iterate.

    ``damping_adaptation``, ``lm_model`` and ``backtracking`` are static; ``min_damping``,
    ``warm_start`` and ``progress_tol`` may be traced.  Under ``inject_hyperparams``
    with adaptation on, the injected ``damping`` is the starting λ; changing it
    restarts λ from the new value.  New state values (λ, the previous direction) and
    q, ρ are in ``solve_dtype``; losses are evaluated at the parameters in their dtype.
    """

    def make_matvec(params, extra_args):
        (value_fn,) = require(extra_args, "hessian_free", "value_fn", params=params)
        # Linearise ∇L once per step; each CG iteration then costs one tangent pass.
        _, hvp_fn = jax.linearize(jax.grad(value_fn), params)
        return hvp_fn

    options = CGOptions(damping_adaptation, lm_model, min_damping, warm_start, progress_tol, backtracking)
    return cg_transformation(
        "hessian_free", make_matvec, learning_rate, damping, maxiter, tol, solve_dtype, product_dtype, options
    )
