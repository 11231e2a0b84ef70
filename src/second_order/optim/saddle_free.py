"""Saddle-free Newton on a Krylov subspace (Dauphin et al. 2014)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from second_order.curvature import tree_cast
from second_order.krylov import lanczos, negative_ritz, ritz
from second_order.optim.base import (
    SecondOrderState,
    check_hyperparameters,
    descent_updates,
    distinct_buffers,
    positive_static_int,
    require,
    resolve_solve_dtype,
)
from second_order.solvers import pinv_rtol


def saddle_free_newton(
    learning_rate: optax.ScalarOrSchedule,
    damping: float,
    *,
    krylov_dim: int = 20,
    solve_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Saddle-free Newton: ``w ← w − η d`` with ``d = V (|T| + λI)⁻¹ Vᵀ g``.

    ``k = krylov_dim`` Lanczos steps (full reorthogonalisation, capped at ``n``) on the
    mini-batch Hessian from ``g`` give an orthonormal basis ``Vᵀ`` of the Krylov space
    ``K_k(H, g)`` and ``T = V H Vᵀ``; with ``T = Q Θ Qᵀ``, ``|T| = Q |Θ| Qᵀ`` and (as
    ``V g = ‖g‖ e₁``) ``d = Vᵀ Q (|Θ| + λ)⁻¹ Qᵀ ‖g‖ e₁``.  Rescaling by ``|θ|`` instead
    of ``θ`` makes the step descend along negative curvature instead of being
    attracted to saddle points, as Newton's ``−H⁻¹g`` is.  Dauphin, Pascanu, Gulcehre,
    Cho, Ganguli & Bengio (2014), "Identifying and attacking the saddle point problem
    in high-dimensional non-convex optimization", NeurIPS (their Krylov variant).
    When the Krylov space is ``H``-invariant (e.g. ``k ≥ n``), ``d = (|H| + λI)⁻¹ g``
    exactly.  Eigenvalues of ``|T| + λI`` below numpy's pseudo-inverse cut-off
    (``10·k·eps`` × the largest) are dropped (only possible for λ = 0).

    ``update(grads, state, params, value_fn=...)``.  Precision: ``grads`` only cast
    to ``solve_dtype``; Hessian-vector products (linearised at the parameters cast to
    ``solve_dtype``), Lanczos and the small eigendecomposition in ``solve_dtype``
    (default float64 when ``jax_enable_x64`` is on, else float32); the update has the
    parameters' dtype.  ``learning_rate`` and ``damping`` may be traced
    (``optax.inject_hyperparams(saddle_free_newton, static_args=("krylov_dim",))``).

    Diagnostics: ``min_eigenvalue`` (smallest Ritz value; ``+inf``, the minimum over no
    values, when ``g = 0`` builds no Krylov space), ``max_eigenvalue`` (largest Ritz
    value; ``−inf`` when ``g = 0``), ``negative_ritz`` (number of Ritz values
    negative beyond rounding, :func:`second_order.krylov.negative_ritz`), ``krylov_size``
    (Lanczos vectors built, < k after a breakdown), ``grad_norm``, ``step_norm`` (‖d‖).
    """
    name = "saddle_free_newton"
    check_hyperparameters(name, learning_rate, damping)
    k = positive_static_int(name, "krylov_dim", krylov_dim)
    dtype = resolve_solve_dtype(solve_dtype)

    def init(params):
        del params
        zero = jnp.zeros((), dtype)
        izero = jnp.zeros((), jnp.int32)
        return SecondOrderState(
            count=jnp.zeros((), jnp.int32),
            diagnostics={
                "min_eigenvalue": zero,
                "max_eigenvalue": zero,
                "negative_ritz": izero,
                "krylov_size": izero,
                "grad_norm": zero,
                "step_norm": zero,
            },
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name}: update() needs params (the Hessian is evaluated there)")
        (value_fn,) = require(extra_args, name, "value_fn", params=params)
        p = tree_cast(params, dtype)
        g, unravel = ravel_pytree(tree_cast(grads, dtype))
        _, hvp = jax.linearize(jax.grad(value_fn), p)

        def matvec(v: jax.Array) -> jax.Array:
            return ravel_pytree(tree_cast(hvp(unravel(v)), dtype))[0]

        kk = min(k, g.shape[0])
        lz = lanczos(matvec, g, kk)
        theta, q, active = ritz(lz)
        gnorm = jnp.linalg.norm(g)
        scale = jnp.abs(theta) + jnp.asarray(damping, dtype)
        cutoff = pinv_rtol(kk, dtype) * jnp.max(jnp.where(active, scale, 0.0))
        keep = active & (scale > cutoff)
        inverse = jnp.where(keep, 1.0 / jnp.where(keep, scale, 1.0), 0.0)
        d_small = q @ (inverse * (gnorm * q[0]))  # Q (|Θ| + λ)⁻¹ Qᵀ (‖g‖ e₁)
        d = lz.basis.T @ d_small
        some = lz.size > 0
        diagnostics = {
            "min_eigenvalue": jnp.where(some, theta[0], jnp.inf).astype(dtype),
            "max_eigenvalue": jnp.max(jnp.where(active, theta, -jnp.inf)).astype(dtype),
            "negative_ritz": jnp.sum(negative_ritz(theta, active)).astype(jnp.int32),
            "krylov_size": lz.size,
            "grad_norm": gnorm,
            "step_norm": jnp.linalg.norm(d),
        }
        updates = descent_updates(unravel(d), params, learning_rate, state.count)
        return updates, SecondOrderState(state.count + 1, diagnostics)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)
