"""Shared pieces of the second-order optax transformations: state, precision, step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from second_order.curvature import tree_cast
from second_order.solvers import CGResult, cg, static_int

PyTree = Any


class SecondOrderState(NamedTuple):
    """Optimizer state: a step counter and the last step's diagnostics.

    ``diagnostics`` maps names to scalars (fixed keys per optimizer, so the pytree
    structure is static); trainers log them without knowing the optimizer.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    diagnostics: dict[str, jax.Array]


def collect_diagnostics(opt_state: Any) -> dict[str, jax.Array]:
    """All per-step diagnostics found anywhere in an (optax-chained) optimizer state."""
    found: dict[str, jax.Array] = {}
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, SecondOrderState))
    for node in nodes:
        if isinstance(node, SecondOrderState):
            found.update(node.diagnostics)
    return found


def resolve_solve_dtype(solve_dtype: Any | None) -> Any:
    """``None`` → float64 when ``jax_enable_x64`` is on, else float32."""
    if solve_dtype is not None:
        return jnp.dtype(solve_dtype)
    return jnp.dtype(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate of step ``count`` (constant or optax schedule)."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


def concrete_float(value: Any) -> float | None:
    """``float(value)`` for a concrete number or array, ``None`` for a tracer (never concretises)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return float(value)


def check_hyperparameters(name: str, learning_rate: Any, damping: Any, tol: Any = None) -> None:
    """Reject negative learning rate / damping and tolerances outside (0, 1) at construction.

    Only concrete values are checked: under ``optax.inject_hyperparams`` the factory is
    called again inside ``update`` with traced hyperparameters, which pass unchecked
    (they were checked when the state was built, where they are concrete).
    """
    lr = None if callable(learning_rate) else concrete_float(learning_rate)
    if lr is not None and lr < 0:
        raise ValueError(f"{name}: learning_rate must be >= 0, got {learning_rate}")
    lam = concrete_float(damping)
    if lam is not None and lam < 0:
        raise ValueError(f"{name}: damping must be >= 0, got {damping}")
    t = None if tol is None else concrete_float(tol)
    if t is not None and not 0.0 < t < 1.0:
        raise ValueError(f"{name}: tol must lie in (0, 1), got {tol}")


def descent_updates(
    direction: PyTree, params: PyTree, learning_rate: optax.ScalarOrSchedule, count: jax.Array
) -> PyTree:
    """updates = −lr · d, each leaf cast back to the dtype of its parameter."""
    lr = learning_rate_at(learning_rate, count)
    return jax.tree_util.tree_map(lambda d, p: (-lr * d).astype(p.dtype), direction, params)


def cg_transformation(
    name: str,
    make_matvec: Callable[[PyTree, Mapping[str, Any]], Callable[[PyTree], PyTree]],
    learning_rate: optax.ScalarOrSchedule,
    damping: Any,
    maxiter: Any,
    tol: Any,
    solve_dtype: Any | None,
    product_dtype: Any | None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free step: CG on (C + λI) d = g with C given by ``make_matvec``.

    ``make_matvec(params_in_product_dtype, extra_args)`` returns v ↦ C v, linearised
    at the parameters cast to ``product_dtype`` (``None``: ``solve_dtype``).  Each CG
    product casts v to ``product_dtype`` and C v back to ``solve_dtype``; ``g`` (the
    caller's gradient), λ v, the dots and the CG vectors are in ``solve_dtype``; the
    update is cast back to the parameters' dtype.
    """
    check_hyperparameters(name, learning_rate, damping, tol)
    k = None if maxiter is None else static_int(maxiter)
    if k is not None and k < 1:
        raise ValueError(f"{name}: maxiter must be >= 1 or None, got {maxiter}")
    dtype = resolve_solve_dtype(solve_dtype)
    pdtype = dtype if product_dtype is None else jnp.dtype(product_dtype)

    def init(params: PyTree) -> SecondOrderState:
        del params
        zero = jnp.zeros((), dtype)
        return SecondOrderState(
            count=jnp.zeros((), jnp.int32),
            diagnostics={
                "cg_iterations": jnp.zeros((), jnp.int32),
                "cg_residual": zero,
                "cg_min_curvature": zero,
                "cg_negative_curvature": jnp.zeros((), jnp.int32),
                "grad_norm": zero,
                "step_norm": zero,
            },
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name}: update() needs params (the curvature is evaluated there)")
        g = tree_cast(grads, dtype)
        product = make_matvec(tree_cast(params, pdtype), extra_args)
        lam = jnp.asarray(damping, dtype)

        def damped(v: PyTree) -> PyTree:  # (C + λI) v
            return otu.tree_add_scale(tree_cast(product(tree_cast(v, pdtype)), dtype), lam, v)

        res: CGResult = cg(damped, g, tol=tol, maxiter=maxiter)
        diagnostics = {
            "cg_iterations": res.iterations,
            "cg_residual": res.residual_norm / jnp.where(res.b_norm > 0, res.b_norm, 1.0),
            "cg_min_curvature": res.min_curvature,
            "cg_negative_curvature": res.negative_curvature.astype(jnp.int32),
            "grad_norm": res.b_norm,
            "step_norm": otu.tree_norm(res.x),
        }
        updates = descent_updates(res.x, params, learning_rate, state.count)
        return updates, SecondOrderState(state.count + 1, diagnostics)

    return optax.GradientTransformationExtraArgs(init, update)


def require(extra_args: Mapping[str, Any], name: str, *keys: str) -> tuple[Any, ...]:
    """Fetch required extra arguments, with an error that says how to pass them."""
    missing = [k for k in keys if extra_args.get(k) is None]
    if missing:
        raise TypeError(
            f"{name}.update() needs the extra argument(s) {', '.join(missing)}: "
            f"call update(grads, state, params, {', '.join(k + '=...' for k in keys)})"
        )
    return tuple(extra_args[k] for k in keys)
