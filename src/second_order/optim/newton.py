"""Exact (damped) Newton on the dense mini-batch Hessian."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from second_order.curvature import dense_hessian, tree_cast
from second_order.optim.base import (
    SecondOrderState,
    check_hyperparameters,
    concrete_float,
    descent_updates,
    distinct_buffers,
    require,
    resolve_solve_dtype,
    static_hyperparameter,
)
from second_order.solvers import damped_solve, low_rank_damped_solve

#: Values of the ``solve_path`` diagnostic.
CHOLESKY, EIGH_PINV, LOW_RANK = 0, 1, 2

#: Default ``max_rank`` of :func:`newton`: the paper's mini-batch Hessian (batch 64,
#: 784-10-10 ReLU network) has rank ≈ 470 measured, ≤ 64 · (10 + 2·10) = 1,920.
DEFAULT_MAX_RANK = 640

#: Default ``max_params`` of :func:`newton`: above the paper's 7,960 parameters, below
#: every larger preset (a 20,490-parameter CNN, MLPs of 59,210 and 203,530).
DEFAULT_MAX_PARAMS = 10_000
PAPER_PARAMS = 7_960


def newton(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 0.0,
    *,
    solve_dtype: Any | None = None,
    first_step_dtype: Any | None = None,
    hessian_chunk_size: int | None = None,
    max_rank: int | None = DEFAULT_MAX_RANK,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Exact Newton: ``w ← w − η d`` with ``d = pinv(H + λI) g``.

    ``H`` is the full Hessian of the mini-batch loss over all parameters (flattened);
    ``λ`` the damping (Levenberg 1944 / Marquardt 1963 style).  Undamped (``λ = 0``) on
    a ReLU network ``H`` is singular and indefinite, and ``d`` is the minimum-norm
    solution of ``H d = g``, what the paper's ``jnp.linalg.pinv`` computes.

    Two exact paths, chosen by ``max_rank`` (default 640):

    * low rank (``max_rank < n``, the default for any network with more than 640
      parameters): a mini-batch Hessian has rank far below ``n`` (at most batch ×
      (classes + 2·hidden) for a one-hidden-layer ReLU network: 1,920 against n =
      7,960 in the paper, about 470 measured), and ``pinv(H + λI) g`` is computed
      exactly from ``max_rank + 8`` Hessian-vector products, a QR and a
      ``max_rank``-sized eigendecomposition, never forming ``H``
      (:func:`second_order.solvers.low_rank_damped_solve`).  The premise is verified
      numerically every step on random probes; when it fails (rank ≥ ``max_rank``)
      the step falls back to the dense path.  ``seed`` seeds the sketch (folded with
      the step count).
    * dense (``max_rank=None``, or ``n ≤ max_rank``): ``H`` built from ``n``
      Hessian-vector products (``hessian_chunk_size`` rows at a time to bound
      memory; ``n²`` scalars, 0.5 GB at n = 7,960 in float64) and solved by Cholesky
      when that provably equals the pseudo-inverse, else by the symmetric
      eigendecomposition pseudo-inverse (:func:`second_order.solvers.damped_solve`).

    ``update(grads, state, params, value_fn=...)``, ``value_fn: params → scalar
    mini-batch loss``.  Precision: ``grads`` is the caller's gradient (usually
    computed in the parameters' dtype), only cast; the Hessian (products at the
    parameters cast to ``solve_dtype``) and the solve run in ``solve_dtype`` (default
    float64 when ``jax_enable_x64`` is on, else float32); the update has the
    parameters' dtype.  ``first_step_dtype`` (``None``: off) runs step 0 (``count ==
    0``) instead with parameters and gradient cast to that dtype (Hessian and solve
    in it, the direction then cast to ``solve_dtype``); later steps as above (one
    ``lax.cond``, only the taken branch runs).  That is the paper's path: float32
    parameters made its first Hessian and pinv float32, and the float64 step turned
    the parameters float64 for every later step — to reproduce it fully, use
    ``first_step_dtype="float32"``, ``solve_dtype="float64"`` and run the parameters
    in float64 from step 1 (the suite's model ``param_dtype``).

    Size limit: ``init`` refuses parameters with more than ``max_params`` entries
    (default 10,000; ``None``: no limit) in one line naming the limit and the
    alternatives.  Both paths may form ``n × n`` matrices (the dense one always, the
    low-rank one whenever its check fails) whose eigendecomposition costs O(n³):
    (n / 7,960)³ times the paper's model's dense step (about 50 s on a 2-core CPU,
    ``make bench``), e.g. 17× at n = 20,490, even where the memory (checked after
    compilation by the suite) would suffice.  Krylov methods (:func:`hessian_free`, :func:`trust_region`) have
    no such limit.

    ``learning_rate`` and ``damping`` may be traced (``optax.inject_hyperparams``);
    ``max_rank`` and ``hessian_chunk_size`` fix shapes, so name them in
    ``static_args`` there: ``optax.inject_hyperparams(newton, static_args=("max_rank",))``.

    Diagnostics: ``solve_path`` (0 Cholesky, 1 eigendecomposition pseudo-inverse,
    2 low rank), ``min_eigenvalue`` of ``H + λI`` (``+inf`` on the Cholesky path, which
    does not compute it), ``rank`` of ``H`` kept by the pseudo-inverse (``n`` on the
    Cholesky path), ``range_residual`` of the low-rank check (``+inf`` when it did not
    run), ``grad_norm``, ``step_norm``.  "Not computed" is ``+inf``, never NaN, so a
    jitted loop run under ``jax_debug_nans`` stops only at a real NaN (the report and
    the run files treat both as missing).  The Cholesky attempt itself yields NaN
    when ``H + λI`` is not positive definite (always for λ = 0): internal to the step,
    but an eager step or ``jax_debug_nans``'s de-optimized re-run reports it.
    """
    check_hyperparameters("newton", learning_rate, damping)
    max_rank = static_hyperparameter("newton", "max_rank", max_rank)
    chunk_size = static_hyperparameter("newton", "hessian_chunk_size", hessian_chunk_size)
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"newton: max_rank must be >= 1 or None, got {max_rank}")
    limit = None if max_params is None else concrete_float(max_params)  # None when traced: no check
    if limit is not None and limit < 1:
        raise ValueError(f"newton: max_params must be >= 1 or None, got {max_params}")
    dtype = resolve_solve_dtype(solve_dtype)
    first = None if first_step_dtype is None else jnp.dtype(first_step_dtype)

    def init(params):
        check_size(sum(int(p.size) for p in jax.tree_util.tree_leaves(params)), limit)
        zero = jnp.zeros((), dtype)
        return SecondOrderState(
            count=jnp.zeros((), jnp.int32),
            diagnostics={
                "solve_path": jnp.zeros((), jnp.int32),
                "min_eigenvalue": zero,
                "rank": jnp.zeros((), jnp.int32),
                "range_residual": zero,
                "grad_norm": zero,
                "step_norm": zero,
            },
        )

    def direction(params, grads, value_fn, count, dt):
        """(d, solve_path, min_eigenvalue, rank, range_residual) with Hessian and solve in ``dt``."""
        p = tree_cast(params, dt)
        g, _ = ravel_pytree(tree_cast(grads, dt))

        def dense(_):
            h = dense_hessian(value_fn, p, chunk_size=chunk_size)
            res = damped_solve(h, g, damping)
            path = jnp.where(res.used_cholesky, CHOLESKY, EIGH_PINV).astype(jnp.int32)
            return res.x, path, res.min_eigenvalue, res.rank, jnp.array(jnp.inf, dt)

        if max_rank is None or max_rank >= g.shape[0]:
            out = dense(None)
        else:
            w, unravel_w = ravel_pytree(p)
            _, hvp_flat = jax.linearize(jax.grad(lambda v: value_fn(unravel_w(v))), w)
            key = jax.random.fold_in(jax.random.PRNGKey(seed), count)
            low = low_rank_damped_solve(jax.vmap(hvp_flat, in_axes=1, out_axes=1), g, damping, max_rank, key)

            def low_rank(_):
                return low.x, jnp.int32(LOW_RANK), low.min_eigenvalue, low.rank, low.range_residual

            out = jax.lax.cond(low.verified, low_rank, dense, None)
            out = out[:4] + (low.range_residual,)
        x, path, min_eig, rank, range_residual = out
        return x.astype(dtype), path, min_eig.astype(dtype), rank, range_residual.astype(dtype)

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("newton: update() needs params (the Hessian is evaluated there)")
        (value_fn,) = require(extra_args, "newton", "value_fn", params=params)
        g, unravel = ravel_pytree(tree_cast(grads, dtype))
        if first is None or first == dtype:
            out = direction(params, grads, value_fn, state.count, dtype)
        else:
            out = jax.lax.cond(
                state.count == 0,
                lambda _: direction(params, grads, value_fn, state.count, first),
                lambda _: direction(params, grads, value_fn, state.count, dtype),
                None,
            )
        x, path, min_eig, rank, range_residual = out
        diagnostics = {
            "solve_path": path,
            "min_eigenvalue": min_eig,
            "rank": rank,
            "range_residual": range_residual,
            "grad_norm": jnp.linalg.norm(g),
            "step_norm": jnp.linalg.norm(x),
        }
        updates = descent_updates(unravel(x), params, learning_rate, state.count)
        return updates, SecondOrderState(state.count + 1, diagnostics)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)


def check_size(n: int, max_params: float | None) -> None:
    """Refuse ``n > max_params`` parameters in one line: the limit, the cost and the alternatives."""
    if max_params is None or n <= max_params:
        return
    raise ValueError(
        f"newton: max_params must be at least the model's {n:,} parameters (or null: no limit) to run exact Newton "
        f"on it: its {n:,} × {n:,} Hessian ({8 * n * n / 1e9:.1f} GB in float64) and O(n³) eigendecomposition "
        f"cost {(n / PAPER_PARAMS) ** 3:,.0f}× the paper's {PAPER_PARAMS:,}-parameter model's per step "
        f"(about 50 s there on a 2-core CPU); or use a Krylov method (hessian_free, trust_region), got {max_params:.0f}"
    )
