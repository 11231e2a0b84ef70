"""Shared pieces of the second-order optax transformations: state, precision, step."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from second_order.curvature import tree_cast
from second_order.solvers import CGResult, cg, tree_vdot

PyTree = Any


class SecondOrderState(NamedTuple):
    """Optimizer state: a step counter and the last step's diagnostics.

    ``diagnostics`` maps names to scalars (fixed keys per optimizer, so the pytree
    structure is static); trainers log them without knowing the optimizer.
    """

    count: jax.Array
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
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate of step ``count`` (constant or optax schedule)."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


def check_hyperparameters(name: str, learning_rate: Any, damping: Any, tol: float | None = None) -> None:
    """Reject negative learning rate / damping and tolerances outside (0, 1) at construction."""
    if not callable(learning_rate) and float(learning_rate) < 0:
        raise ValueError(f"{name}: learning_rate must be >= 0, got {learning_rate}")
    if float(damping) < 0:
        raise ValueError(f"{name}: damping must be >= 0, got {damping}")
    if tol is not None and not 0.0 < float(tol) < 1.0:
        raise ValueError(f"{name}: tol must lie in (0, 1), got {tol}")


def descent_updates(
    direction: PyTree, params: PyTree, learning_rate: optax.ScalarOrSchedule, count: jax.Array
) -> PyTree:
    """updates = −lr · d, each leaf cast back to the dtype of its parameter."""
    lr = learning_rate_at(learning_rate, count)
    return jax.tree_util.tree_map(lambda d, p: (-lr * d).astype(p.dtype), direction, params)


def tree_norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(tree_vdot(tree, tree))


def cg_transformation(
    name: str,
    make_matvec: Callable[[PyTree, Mapping[str, Any]], Callable[[PyTree], PyTree]],
    learning_rate: optax.ScalarOrSchedule,
    damping: float,
    maxiter: int | None,
    tol: float,
    solve_dtype: Any | None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free step: CG on (C + λI) d = g with C given by ``make_matvec``.

    ``make_matvec(params_in_solve_dtype, extra_args)`` returns v ↦ C v.  The
    gradient, the products and CG run in ``solve_dtype``; the update is cast back to
    the parameters' dtype.
    """
    check_hyperparameters(name, learning_rate, damping, tol)
    if maxiter is not None and int(maxiter) < 1:
        raise ValueError(f"{name}: maxiter must be >= 1 or None, got {maxiter}")
    dtype = resolve_solve_dtype(solve_dtype)

    def init(params: PyTree) -> SecondOrderState:
        del params
        zero = jnp.zeros((), dtype)
        return SecondOrderState(
            count=jnp.zeros((), jnp.int32),
            diagnostics={
                "cg_iterations": jnp.zeros((), jnp.int32),
                "cg_residual": zero,
                "cg_min_curvature": zero,
                "grad_norm": zero,
                "step_norm": zero,
            },
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name}: update() needs params (the curvature is evaluated there)")
        p = tree_cast(params, dtype)
        g = tree_cast(grads, dtype)
        product = make_matvec(p, extra_args)
        lam = jnp.asarray(damping, dtype)
        res: CGResult = cg(lambda v: tree_axpy_damped(product(v), lam, v), g, tol=tol, maxiter=maxiter)
        diagnostics = {
            "cg_iterations": res.iterations,
            "cg_residual": res.residual_norm / jnp.where(res.b_norm > 0, res.b_norm, 1.0),
            "cg_min_curvature": res.min_curvature,
            "grad_norm": res.b_norm,
            "step_norm": tree_norm(res.x),
        }
        updates = descent_updates(res.x, params, learning_rate, state.count)
        return updates, SecondOrderState(state.count + 1, diagnostics)

    return optax.GradientTransformationExtraArgs(init, update)


def tree_axpy_damped(cv: PyTree, lam: jax.Array, v: PyTree) -> PyTree:
    """C v + λ v."""
    return jax.tree_util.tree_map(lambda a, b: a + lam.astype(a.dtype) * b, cv, v)


def require(extra_args: Mapping[str, Any], name: str, *keys: str) -> tuple[Any, ...]:
    """Fetch required extra arguments, with an error that says how to pass them."""
    missing = [k for k in keys if extra_args.get(k) is None]
    if missing:
        raise TypeError(
            f"{name}.update() needs the extra argument(s) {', '.join(missing)}: "
            f"call update(grads, state, params, {', '.join(k + '=...' for k in keys)})"
        )
    return tuple(extra_args[k] for k in keys)
