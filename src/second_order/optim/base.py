"""Shared pieces of the second-order optax transformations: state, precision, step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from second_order.curvature import tree_cast
from second_order.optim.cg_step import CGOptions, backtrack, backtrack_iterations
from second_order.optim.levenberg_marquardt import DAMPED, adapt_damping, quadratic_model, reduction_ratio
from second_order.solvers import CGResult, cg, static_int

PyTree = Any


class SecondOrderState(NamedTuple):
    """Optimizer state: a step counter and the last step's diagnostics.

    ``diagnostics`` maps names to scalars (fixed keys per optimizer, so the pytree
    structure is static); trainers log them without knowing the optimizer.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    diagnostics: dict[str, jax.Array]


class CGState(NamedTuple):
    """State of a CG step with Martens's options on (see :func:`cg_transformation`).

    ``count`` and ``diagnostics`` as in :class:`SecondOrderState`; ``damping`` the λ of
    the next step (Levenberg–Marquardt); ``damping_arg`` the ``damping`` hyperparameter
    seen last (a different one, e.g. injected, restarts λ from it); ``direction`` the
    last final CG iterate (for warm starts; ``None`` when they are off).  λ values and
    the direction are in ``solve_dtype``.
    """

    count: jax.Array  # type: ignore[assignment]
    diagnostics: dict[str, jax.Array]
    damping: jax.Array
    damping_arg: jax.Array
    direction: PyTree


#: The states whose ``diagnostics`` :func:`collect_diagnostics` reports.
DIAGNOSTIC_STATES = (SecondOrderState, CGState)


def collect_diagnostics(opt_state: Any) -> dict[str, jax.Array]:
    """All per-step diagnostics found anywhere in an (optax-chained) optimizer state."""
    found: dict[str, jax.Array] = {}
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, DIAGNOSTIC_STATES))
    for node in nodes:
        if isinstance(node, DIAGNOSTIC_STATES):
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


def cg_diagnostics(res: CGResult, direction: PyTree) -> dict[str, jax.Array]:
    """The diagnostics of every CG step, for the direction taken (``res.x`` unless backtracked)."""
    return {
        "cg_iterations": res.iterations,
        "cg_residual": res.residual_norm / jnp.where(res.b_norm > 0, res.b_norm, 1.0),
        "cg_min_curvature": res.min_curvature,
        "cg_negative_curvature": res.negative_curvature.astype(jnp.int32),
        "grad_norm": res.b_norm,
        "step_norm": otu.tree_norm(direction),
    }


def cg_transformation(
    name: str,
    make_matvec: Callable[[PyTree, Mapping[str, Any]], Callable[[PyTree], PyTree]],
    learning_rate: optax.ScalarOrSchedule,
    damping: Any,
    maxiter: Any,
    tol: Any,
    solve_dtype: Any | None,
    product_dtype: Any | None,
    options: CGOptions | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free step: CG on (C + λI) d = g with C given by ``make_matvec``; ``w ← w − η d``.

    ``make_matvec(params_in_product_dtype, extra_args)`` returns v ↦ C v, linearised
    at the parameters cast to ``product_dtype`` (``None``: ``solve_dtype``).  Each CG
    product casts v to ``product_dtype`` and C v back to ``solve_dtype``; ``g`` (the
    caller's gradient), λ v, the dots and the CG vectors are in ``solve_dtype``; the
    update is cast back to the parameters' dtype.

    ``options`` (:class:`~second_order.optim.cg_step.CGOptions`, all off by default:
    plain damped CG from 0, bit for bit the step without options) adds Martens's
    (2010) pieces; with any but ``progress_tol`` the state is a :class:`CGState`
    instead of a :class:`SecondOrderState`:

    * ``warm_start`` ζ: CG starts at ζ·(the previous step's final CG iterate, kept in
      the state in ``solve_dtype``); one extra product per step (``r₀ = g − A x₀``).
    * ``progress_tol`` ε: the relative-progress stopping rule of :func:`~second_order.solvers.cg`.
    * ``backtracking``: the iterates at iterations ⌈1.3ʲ⌉ ≤ ``maxiter`` (``10·n`` when
      ``None``; ``maxiter`` must then be static) are kept during CG (that many extra
      copies of the parameters, in ``solve_dtype``) and the step uses the one chosen
      by :func:`~second_order.optim.cg_step.backtrack` (``value_fn`` evaluated on the
      parameters as the step would leave them, in their dtype); diagnostic
      ``backtrack_iteration``.  Warm starts use the final iterate (Martens 2010, §4.6).
    * ``damping_adaptation="levenberg_marquardt"``: λ lives in the state
      (``damping`` is the first step's λ, raised to ``min_damping`` if below it; an
      injected ``damping`` that changes between steps restarts λ from the new value) and follows
      :mod:`~second_order.optim.levenberg_marquardt` after each step; the step is
      always taken.  Costs ``value_fn`` at ``w`` and at ``w + s`` (the latter shared
      with backtracking) and one curvature product ``C d`` for ``q(s)`` (exact for
      the direction taken, also after backtracking or a warm start; the CG identity
      ``dᵀ(C + λI)d = dᵀ(g − r)`` would be free but carries the recursive residual's
      drift and cancels λ‖d‖² against dᵀCd in low precision).  Losses are computed in
      the parameters' dtype and cast to ``solve_dtype``, where q, ρ and λ live.
      Diagnostics ``damping`` (the λ of this step's solve) and ``rho``.
    """
    opts = (options or CGOptions()).check(name, concrete_float)
    check_hyperparameters(name, learning_rate, damping, tol)
    k = None if maxiter is None else static_int(maxiter)
    if k is not None and k < 1:
        raise ValueError(f"{name}: maxiter must be >= 1 or None, got {maxiter}")
    dtype = resolve_solve_dtype(solve_dtype)
    pdtype = dtype if product_dtype is None else jnp.dtype(product_dtype)

    def init(params: PyTree) -> SecondOrderState | CGState:
        zero = jnp.zeros((), dtype)
        diagnostics = {
            "cg_iterations": jnp.zeros((), jnp.int32),
            "cg_residual": zero,
            "cg_min_curvature": zero,
            "cg_negative_curvature": jnp.zeros((), jnp.int32),
            "grad_norm": zero,
            "step_norm": zero,
        }
        count = jnp.zeros((), jnp.int32)
        if opts.plain:
            return SecondOrderState(count=count, diagnostics=diagnostics)
        if opts.backtracking:
            diagnostics["backtrack_iteration"] = jnp.zeros((), jnp.int32)
        if opts.adaptive:
            diagnostics.update(damping=zero, rho=zero)
        lam = jnp.asarray(damping, dtype)
        direction = None if opts.warm_start is None else tree_cast(otu.tree_zeros_like(params), dtype)
        return CGState(count, diagnostics, lam, lam, direction)

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name}: update() needs params (the curvature is evaluated there)")
        g = tree_cast(grads, dtype)
        product = make_matvec(tree_cast(params, pdtype), extra_args)
        lam_arg = jnp.asarray(damping, dtype)
        lam = lam_arg
        if opts.adaptive:  # λ from the state, restarted by a new injected value; never below min_damping
            lam = jnp.where(lam_arg != state.damping_arg, lam_arg, state.damping)
            lam = jnp.maximum(lam, jnp.asarray(opts.min_damping, dtype))

        def curvature(v: PyTree) -> PyTree:  # C v
            return tree_cast(product(tree_cast(v, pdtype)), dtype)

        def damped(v: PyTree) -> PyTree:  # (C + λI) v
            return otu.tree_add_scale(curvature(v), lam, v)

        if opts.plain:
            res: CGResult = cg(damped, g, tol=tol, maxiter=maxiter, progress_tol=opts.progress_tol)
            updates = descent_updates(res.x, params, learning_rate, state.count)
            return updates, SecondOrderState(state.count + 1, cg_diagnostics(res, res.x))

        value_fn = require(extra_args, name, "value_fn", params=params)[0] if opts.needs_value_fn else None
        save_at: tuple[int, ...] = ()
        if opts.backtracking:
            save_at = backtrack_iterations(static_maxiter(name, maxiter, otu.tree_size(g)))
        x0 = None if opts.warm_start is None else otu.tree_scale(jnp.asarray(opts.warm_start, dtype), state.direction)
        res = cg(damped, g, tol=tol, maxiter=maxiter, x0=x0, progress_tol=opts.progress_tol, save_at=save_at)
        lr = learning_rate_at(learning_rate, state.count)
        d, f_new, chosen = res.x, None, None
        if opts.backtracking:
            d, f_new, chosen = backtrack(value_fn, params, lr, res, save_at)
        updates = descent_updates(d, params, learning_rate, state.count)
        diagnostics = cg_diagnostics(res, d)
        if chosen is not None:
            diagnostics["backtrack_iteration"] = chosen
        lam_next = lam
        if opts.adaptive:
            assert value_fn is not None
            f_old = value_fn(params)
            if f_new is None:
                f_new = value_fn(optax.apply_updates(params, updates))
            q = quadratic_model(g, d, curvature(d), lr, lam if opts.lm_model == DAMPED else None)
            rho = reduction_ratio(jnp.asarray(f_new, dtype), jnp.asarray(f_old, dtype), q)
            lam_next = adapt_damping(lam, rho, q, opts.min_damping)
            diagnostics.update(damping=lam, rho=rho)
        direction = None if opts.warm_start is None else res.x
        return updates, CGState(state.count + 1, diagnostics, lam_next, lam_arg, direction)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)


def static_hyperparameter(fn: str, name: str, value: Any) -> int | None:
    """A hyperparameter that fixes array shapes: ``int(value)`` (``None`` passes), or a TypeError if traced."""
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{fn}: {name} fixes array shapes and cannot be traced; with optax.inject_hyperparams "
            f"pass static_args=({name!r}, ...)"
        )
    return int(value)


def positive_static_int(fn: str, name: str, value: Any) -> int:
    """:func:`static_hyperparameter` that must be given and ``>= 1`` (a ValueError otherwise)."""
    out = static_hyperparameter(fn, name, value)
    if out is None or out < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {value}")
    return out


def static_maxiter(name: str, maxiter: Any, n: int) -> int:
    """``maxiter`` as a Python int (``None``: ``10·n``), or a TypeError when it is traced."""
    if maxiter is None:
        return 10 * n
    k = static_int(maxiter)
    if k is None:
        raise TypeError(
            f"{name}: backtracking keeps CG iterates up to maxiter, which fixes array shapes and cannot be "
            "traced; with optax.inject_hyperparams pass static_args=('maxiter', ...)"
        )
    return k


def distinct_buffers(init: Callable[[PyTree], Any]) -> Callable[[PyTree], Any]:
    """``init`` whose state leaves are distinct arrays, none of them a parameter array.

    A state that holds one array in two leaves (``λ`` as both damping and its argument, two
    zero moments) or a parameter itself cannot be donated: ``jax.jit(step,
    donate_argnums=(0, 1))`` fails with "Attempt to donate the same buffer twice".  Repeated
    leaves are copied, once, at ``init``.
    """

    def wrapped(params: PyTree) -> Any:
        seen = {id(leaf) for leaf in jax.tree_util.tree_leaves(params)}

        def fresh(leaf: Any) -> Any:
            if isinstance(leaf, jax.Array) and id(leaf) in seen:
                return jnp.array(leaf, copy=True)
            seen.add(id(leaf))
            return leaf

        return jax.tree_util.tree_map(fresh, init(params))

    return wrapped


def require(extra_args: Mapping[str, Any], name: str, *keys: str, params: PyTree = None) -> tuple[Any, ...]:
    """Fetch required extra arguments, with an error that says how to pass them.

    With ``params``: refuse a tree with ``optax.MaskedNode`` leaves (``optax.masked`` or
    ``optax.multi_transform`` hand the inner optimizer only its part of the parameters,
    which the loss functions cannot take) with an error that says what to do instead.
    """
    masked = any(
        isinstance(leaf, optax.MaskedNode)
        for leaf in jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    )
    if masked:
        raise ValueError(
            f"{name}.update() got masked params (optax.masked / optax.multi_transform), but the loss "
            f"functions it is given ({', '.join(keys)}) take the whole parameter tree. To freeze parameters, "
            "give the optimizer only the trained ones and let the loss functions close over the frozen ones"
        )
    missing = [k for k in keys if extra_args.get(k) is None]
    if missing:
        raise TypeError(
            f"{name}.update() needs the extra argument(s) {', '.join(missing)}: "
            f"call update(grads, state, params, {', '.join(k + '=...' for k in keys)})"
        )
    return tuple(extra_args[k] for k in keys)
