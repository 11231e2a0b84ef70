"""Trust-region Newton: Steihaug–Toint CG or Newton–Lanczos (GLTR) inner solves."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from second_order.curvature import linearized_ggn_vp, tree_cast
from second_order.krylov import KrylovStep, gltr, steihaug_cg
from second_order.optim.base import (
    SecondOrderState,
    concrete_float,
    distinct_buffers,
    positive_static_int,
    require,
    resolve_solve_dtype,
)

PyTree = Any

SOLVERS = ("steihaug", "gltr")
CURVATURES = ("hessian", "gauss_newton")

#: Radius update of Nocedal & Wright, Algorithm 4.1: shrink below, expand above.
SHRINK_BELOW, SHRINK_FACTOR = 0.25, 0.25
EXPAND_ABOVE, EXPAND_FACTOR = 0.75, 2.0


class TrustRegionState(NamedTuple):
    """``radius`` for the next step, and the step counter and diagnostics (``base``)."""

    radius: jax.Array
    base: SecondOrderState


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"trust_region: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def trust_region(
    initial_radius: float,
    *,
    solver: str = "steihaug",
    curvature: str = "hessian",
    max_radius: float = 10.0,
    eta: float = 0.1,
    krylov_dim: int = 20,
    maxiter: int = 50,
    tol: float = 1e-5,
    solve_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Trust-region Newton: ``w ← w + s`` with ``s ≈ argmin_{‖s‖ ≤ Δ} m(s)``, Δ adapted.

    ``m(s) = gᵀs + ½ sᵀBs`` is the quadratic model of the mini-batch loss, ``B`` the
    Hessian (``curvature="hessian"``: Hessian-vector products, ∇L linearised once per
    step) or the generalized Gauss-Newton matrix ``Jᵀ H_z J`` (``"gauss_newton"``:
    :func:`second_order.curvature.ggn_vp`).  No learning rate: the step is ``s``.

    Inner solvers (flat vectors, :mod:`second_order.krylov`):

    * ``"steihaug"``: Steihaug–Toint truncated CG (Nocedal & Wright, Numerical
      Optimization, Alg. 7.2): stops at negative curvature or at the boundary (then
      ``‖s‖ = Δ``), at relative residual ``tol`` or after ``maxiter`` products.
    * ``"gltr"``: Newton–Lanczos (Gould, Lucidi, Roma & Toint 1999): ``krylov_dim``
      Lanczos steps from ``g`` (full reorthogonalisation; capped at ``n``) and the
      subproblem solved exactly on the tridiagonal ``T`` (Moré & Sorensen 1983, hard
      case included), so it follows negative curvature to the boundary.  ``tol``
      and ``maxiter`` are not used.

    Ratio and radius (Nocedal & Wright, Alg. 4.1), on the same mini-batch:
    ``ρ = (L(w + s) − L(w)) / m(s)`` (one extra forward pass).  ``ρ < ¼`` (or ρ not
    finite) → ``Δ ← ¼ Δ``; ``ρ > ¾`` with ``‖s‖ = Δ`` → ``Δ ← min(2Δ, max_radius)``;
    otherwise Δ is kept.  The step is taken iff ``ρ > eta`` (``eta ∈ [0, ¼)``), else
    the update is zero.  Δ starts at ``initial_radius`` and lives in the state.  A
    stationary point of the model (``s = 0`` and ``m(s) = 0``, e.g. ``g = 0`` exactly at a
    saddle, where Krylov solvers started at ``g`` cannot move) says nothing about the
    model's fit: there ``ρ = 1`` is reported (loss and model both change by exactly 0),
    the zero step counts as accepted and Δ is kept (instead of ρ = 0/0 quartering Δ at
    every such step).  The model is built from ``grads`` as given and ρ judges the step
    returned: do not rescale either (``optax.clip_by_global_norm`` before, a scaling
    after), or ρ and Δ adapt to another step than the one applied.

    ``update(grads, state, params, value_fn=...)`` (Hessian) or ``update(grads,
    state, params, predict_fn=..., output_loss_fn=...)`` (Gauss-Newton; ``L = ℓ∘f``).
    Precision: ``grads`` is the caller's gradient, only cast to ``solve_dtype``; the
    products (linearised at the parameters cast to ``solve_dtype``), the inner solve,
    ``L(w)``, ``L(w + s)`` and Δ are in ``solve_dtype`` (default float64 when
    ``jax_enable_x64`` is on, else float32); the update has the parameters' dtype.
    ``initial_radius``, ``max_radius``, ``eta`` and ``tol`` may be traced
    (``optax.inject_hyperparams``); ``initial_radius`` is read by ``init`` only (Δ then
    lives in the state: a later injected value does not reset it, unlike LM's injected
    ``damping``); ``krylov_dim`` and ``maxiter`` fix shapes and loop bounds: pass them in
    ``static_args``.

    Diagnostics: ``radius`` (Δ of this step), ``rho`` (ρ = actual / predicted reduction;
    ``−inf`` when the model predicts none, ``−m(s) ≤ 0`` with ``s ≠ 0``: the step is then
    rejected; NaN only from a NaN loss), ``accepted`` (0/1),
    ``boundary`` (0/1, ‖s‖ = Δ), ``negative_curvature`` (0/1: CG met dᵀBd ≤ 0, or a
    negative Ritz value), ``inner_iterations`` (products with B), ``inner_residual``
    (relative residual of the inner solve), ``predicted_reduction`` (−m(s)),
    ``actual_reduction`` (L(w) − L(w + s)), ``grad_norm``, ``step_norm`` (‖s‖, taken or not).
    """
    name = "trust_region"
    _choice("solver", solver, SOLVERS)
    _choice("curvature", curvature, CURVATURES)
    r0, rmax, eta_v, tol_v = (concrete_float(v) for v in (initial_radius, max_radius, eta, tol))
    if r0 is not None and not r0 > 0:
        raise ValueError(f"{name}: initial_radius must be > 0, got {initial_radius}")
    if rmax is not None and not rmax > 0:
        raise ValueError(f"{name}: max_radius must be > 0, got {max_radius}")
    if r0 is not None and rmax is not None and r0 > rmax:
        raise ValueError(f"{name}: initial_radius must be <= max_radius = {max_radius}, got {initial_radius}")
    if eta_v is not None and not 0.0 <= eta_v < SHRINK_BELOW:
        raise ValueError(f"{name}: eta must lie in [0, 0.25), got {eta}")
    if tol_v is not None and not 0.0 < tol_v < 1.0:
        raise ValueError(f"{name}: tol must lie in (0, 1), got {tol}")
    k = positive_static_int(name, "krylov_dim", krylov_dim)
    cg_cap = positive_static_int(name, "maxiter", maxiter)
    dtype = resolve_solve_dtype(solve_dtype)

    def init(params: PyTree) -> TrustRegionState:
        del params
        zero = jnp.zeros((), dtype)
        izero = jnp.zeros((), jnp.int32)
        diagnostics = {
            "radius": zero,
            "rho": zero,
            "accepted": izero,
            "boundary": izero,
            "negative_curvature": izero,
            "inner_iterations": izero,
            "inner_residual": zero,
            "predicted_reduction": zero,
            "actual_reduction": zero,
            "grad_norm": zero,
            "step_norm": zero,
        }
        base = SecondOrderState(count=jnp.zeros((), jnp.int32), diagnostics=diagnostics)
        return TrustRegionState(jnp.asarray(initial_radius, dtype), base)

    def model_functions(
        p: PyTree, extra_args: Mapping[str, Any]
    ) -> tuple[Callable[[PyTree], jax.Array], jax.Array, Callable[[PyTree], PyTree]]:
        """(loss function, L(w), v ↦ B v) at the parameters ``p``."""
        if curvature == "hessian":
            (value_fn,) = require(extra_args, name, "value_fn", params=p)
            (value, _), linear = jax.linearize(jax.value_and_grad(value_fn), p)
            return value_fn, value, lambda v: linear(v)[1]
        predict_fn, output_loss_fn = require(extra_args, name, "predict_fn", "output_loss_fn", params=p)

        def loss(q: PyTree) -> jax.Array:
            return output_loss_fn(predict_fn(q))

        return loss, loss(p), linearized_ggn_vp(predict_fn, output_loss_fn, p)  # linearised once, as gauss_newton

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name}: update() needs params (the model is built there)")
        p = tree_cast(params, dtype)
        g, unravel = ravel_pytree(tree_cast(grads, dtype))
        loss, value, product = model_functions(p, extra_args)

        def matvec(v: jax.Array) -> jax.Array:
            return ravel_pytree(tree_cast(product(unravel(v)), dtype))[0]

        radius = state.radius
        if solver == "steihaug":
            res: KrylovStep = steihaug_cg(matvec, g, radius, tol=tol, maxiter=cg_cap)
        else:
            res = gltr(matvec, g, radius, min(k, g.shape[0]))
        s = res.x
        trial = jax.tree_util.tree_map(jnp.add, p, unravel(s))
        actual = (value - loss(trial)).astype(dtype)
        predicted = (-res.model).astype(dtype)
        stationary = (predicted == 0) & ~jnp.any(s != 0)  # s = 0, m(s) = 0: ρ = 1, Δ kept
        rho = jnp.where(predicted > 0, actual / jnp.where(predicted > 0, predicted, 1.0), -jnp.inf)
        rho = jnp.where(stationary, 1.0, rho)
        accepted = jnp.isfinite(rho) & (rho > eta)
        shrink = ~(rho >= SHRINK_BELOW)  # also when ρ is NaN (a NaN loss)
        expand = (rho > EXPAND_ABOVE) & res.boundary & ~stationary
        new_radius = jnp.where(
            shrink,
            SHRINK_FACTOR * radius,
            jnp.where(expand, jnp.minimum(EXPAND_FACTOR * radius, max_radius), radius),
        ).astype(dtype)
        step = jnp.where(accepted, s, 0.0)
        updates = jax.tree_util.tree_map(lambda u, w: u.astype(w.dtype), unravel(step), params)
        diagnostics = {
            "radius": radius,
            "rho": rho.astype(dtype),
            "accepted": accepted.astype(jnp.int32),
            "boundary": res.boundary.astype(jnp.int32),
            "negative_curvature": res.negative_curvature.astype(jnp.int32),
            "inner_iterations": res.iterations.astype(jnp.int32),
            "inner_residual": res.residual.astype(dtype),
            "predicted_reduction": predicted,
            "actual_reduction": actual,
            "grad_norm": jnp.linalg.norm(g),
            "step_norm": jnp.linalg.norm(s),
        }
        base = SecondOrderState(state.base.count + 1, diagnostics)
        return updates, TrustRegionState(new_radius, base)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)
