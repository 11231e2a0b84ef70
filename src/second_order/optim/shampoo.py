"""Shampoo (Gupta, Koren & Singer 2018) with learning-rate grafting (Anil et al. 2020)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from second_order.optim.base import (
    SecondOrderState,
    concrete_float,
    distinct_buffers,
    learning_rate_at,
    resolve_solve_dtype,
)

PyTree = Any
Pair = tuple[jax.Array, jax.Array]
PerLeaf = tuple[Pair | None, ...]

NAME = "shampoo"
GRAFTS = ("adam", "sgd")


class ShampooState(NamedTuple):
    """State of :func:`shampoo`; per-leaf entries follow the parameters' flattening order.

    ``mu`` and ``nu`` have the parameters' structure and dtype; ``statistics`` and
    ``roots`` hold ``(L, R)`` / ``(L^{-1/4}, R^{-1/4})`` in ``solve_dtype`` for each
    preconditioned leaf and ``None`` for the others.
    """

    mu: PyTree  # EMA of the gradients (b1)
    nu: PyTree  # EMA of the squared gradients (b2), Adam graft only (None for the SGD graft)
    statistics: PerLeaf  # L = Σ β^k G Gᵀ, R = Σ β^k Gᵀ G
    roots: PerLeaf  # inverse fourth roots of the damped statistics, last refresh
    base: SecondOrderState  # step counter and diagnostics


def _check(hyper: dict[str, Any]) -> None:
    """Reject bad hyperparameters at construction (concrete values only, never tracers)."""
    if hyper["graft"] not in GRAFTS:
        allowed = ", ".join(repr(g) for g in GRAFTS)
        raise ValueError(f"{NAME}: graft must be one of {allowed}, got {hyper['graft']!r}")
    lr = hyper["learning_rate"]
    rules: dict[str, tuple[str, Any]] = {
        "learning_rate": ("be >= 0", lambda x: x >= 0),
        "b1": ("lie in [0, 1)", lambda x: 0 <= x < 1),
        "b2": ("lie in [0, 1)", lambda x: 0 <= x < 1),
        "beta": ("lie in (0, 1]", lambda x: 0 < x <= 1),
        "eps": ("be > 0", lambda x: x > 0),
        "graft_eps": ("be > 0 (0 gives 0/0 where a gradient was always 0; e.g. 1e-8)", lambda x: x > 0),
        "precondition_every": ("be >= 1", lambda x: x >= 1),
        "start_preconditioning_step": ("be >= 0", lambda x: x >= 0),
        "max_dim": ("be >= 1", lambda x: x >= 1),
    }
    for key, (rule, ok) in rules.items():
        value = hyper[key]
        x = None if key == "learning_rate" and callable(lr) else concrete_float(value)
        if x is not None and not ok(x):
            raise ValueError(f"{NAME}: {key} must {rule}, got {value}")


def _static_max_dim(value: Any) -> int:
    """``max_dim`` decides which leaves are preconditioned (shapes): concrete, or a clear error."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{NAME}: max_dim fixes which parameters are preconditioned and cannot be traced; "
            "pass it as a Python int (or in optax.inject_hyperparams's static_args)"
        )
    return int(value)


def _inverse_fourth_root(stat: jax.Array, eps: jax.Array, relative: bool) -> tuple[jax.Array, jax.Array]:
    """``(S + ε I)^{-1/4}`` by a symmetric eigendecomposition, and the condition number of ``S + ε I``.

    Eigenvalues below 0 (round-off of a PSD matrix) are clipped to 0; with ``relative``
    the ridge is ``ε · λ_max(S)`` (``ε`` itself when ``S = 0``).
    """
    lam, q = jnp.linalg.eigh(stat)
    lam = jnp.maximum(lam, 0)
    top = lam[-1]
    ridge = eps * jnp.where(top > 0, top, 1) if relative else eps
    root = (q * (lam + ridge) ** -0.25) @ q.T
    return root, (top + ridge) / (lam[0] + ridge)


def _matrix_shape(leaf: jax.Array) -> tuple[int, int]:
    """A ≥ 2-D leaf ``(..., out)`` as the matrix ``(prod(shape[:-1]), out)`` (a conv kernel's fan-in × fan-out)."""
    return math.prod(leaf.shape[:-1]), leaf.shape[-1]


def _finite_or(new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` when all its entries are finite, else ``old``."""
    return jnp.where(jnp.all(jnp.isfinite(new)), new, old)


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    beta: float = 1.0,
    eps: float = 1e-6,
    relative_eps: bool = False,
    graft: str = "adam",
    graft_eps: float = 1e-8,
    precondition_every: int = 10,
    start_preconditioning_step: int = 10,
    max_dim: int = 1024,
    solve_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Shampoo with layer-wise learning-rate grafting: ``w ← w − η d``.

    Gupta, Koren & Singer (2018), "Shampoo: Preconditioned Stochastic Tensor
    Optimization"; grafting, delayed and infrequent preconditioner updates and the
    ε ridge as in Anil et al. (2020), "Scalable Second Order Optimization for Deep
    Learning" (google-research ``distributed_shampoo``); momentum handled as in Shi
    et al. (2023), "A Distributed Data-Parallel PyTorch Implementation of the
    Distributed Shampoo Optimizer" (facebookresearch ``distributed_shampoo``).  At
    step ``t`` (0-based), for each parameter leaf with gradient ``G``:

    * first moment ``m ← b1 m + (1 − b1) G``, ``m̂ = m / (1 − b1^{t+1})``;
    * graft step ``a``: ``graft="adam"``: ``v ← b2 v + (1 − b2) G²``,
      ``a = m̂ / (√(v / (1 − b2^{t+1})) + graft_eps)`` (exactly ``optax.adam``'s step;
      ``graft_eps > 0`` is required, since a coordinate whose gradient was always 0 has
      ``m̂ = v = 0`` and would give 0/0 = NaN, which the norm of ``a`` spreads to its leaf);
      ``graft="sgd"``: ``a = m̂`` (plain SGD's ``G`` when ``b1 = 0``);
    * preconditioned leaves (≥ 2-D and not empty, both dimensions of the matrix view ``≤ max_dim``;
      below): statistics ``L ← β L + G Gᵀ``, ``R ← β R + Gᵀ G`` (from
      zero; ``β = 1`` is the original sum, ``β < 1`` an exponentially weighted sum —
      the reference's ``(1 − β)`` weight on the new term is a constant factor, i.e.
      ``eps / (1 − β)`` here); roots ``P_L = (L + ε I)^{-1/4}``, ``P_R = (R + ε
      I)^{-1/4}``, recomputed at steps ``t = s, s + k, s + 2k, …`` (``s =
      start_preconditioning_step``, ``k = precondition_every``) from the statistics
      including ``G``, kept in the state in between (one ``lax.cond``: the
      eigendecompositions run only at those steps);
    * direction: from step ``s`` on, on preconditioned leaves, ``D = P_L m̂ P_R``
      with the graft's norm, ``d = ‖a‖ D / ‖D‖`` (Frobenius norms per leaf; ``d = 0``
      when ``D = 0``); elsewhere — before step ``s``, 0-D and 1-D leaves (biases)
      and leaves with a matrix dimension ``> max_dim`` — the graft alone, ``d = a``.

    Matrix view: a leaf of shape ``(..., out)`` is preconditioned as the matrix
    ``(prod(shape[:-1]), out)``, ``G`` and ``m̂`` reshaped: a Dense kernel ``(in, out)``
    as it is, a Flax conv kernel ``(*window, in, out)`` (HWIO) as its fan-in × fan-out
    matrix ``(kh·kw·in, out)``, the same matrix as K-FAC's conv blocks.  PyTorch
    implementations view an OIHW kernel as ``(out, in·kh·kw)``: the transpose with the
    fan-in in another order, which gives the same step (Shampoo is equivariant under
    transposition and permutations).  Gupta et al. precondition an order-k tensor
    with k factors instead, Anil et al. merge small axes first.

    Choices: momentum is the bias-corrected EMA ``m̂`` of the gradients, applied
    *before* preconditioning and shared by Shampoo and the graft (Shi et al.), so a
    step's norm is exactly the graft's and graft-only leaves take exactly Adam's
    (SGD's) step; Anil et al. instead add heavy-ball (Nesterov) momentum to the
    grafted step.  ``ε`` is absolute by default (``L + ε I``); ``relative_eps=True``
    uses ``ε · λ_max(L)`` (Anil et al.'s later default, invariant to the gradients'
    scale).  The statistics see the raw gradient ``G``, not ``m̂``.  A root whose
    eigendecomposition returns non-finite values is not replaced (the old one is
    kept, as the reference keeps it when its iteration fails).

    Defaults and their sources: ``b1 = 0.9``, ``b2 = 0.999``, ``graft_eps = 1e-8``
    (Adam, Kingma & Ba 2015, as ``optax.adam``; ``beta1``/``beta2`` of Anil et al.'s
    code); ``beta = 1`` (Gupta et al.'s sum); ``eps = 1e-6`` (Anil et al.'s
    ``matrix_epsilon`` for float32 roots; Shi et al. use 1e-12); ``graft="adam"``
    (Shi et al.'s recipe: graft from the tuned first-order method); ``precondition_every
    = 10`` (the issue's suggestion, at the low end of practice: Anil et al. refresh
    roots rarely since stale roots cost little); ``start_preconditioning_step = 10``
    (a graft-only warm-up while the statistics fill; Anil et al.'s code uses 5, Shi
    et al.'s one precondition period); ``max_dim = 1024`` (Shi et al.'s
    ``max_preconditioner_dim``; not blocked here: larger leaves take the graft).

    Precision: statistics, roots (eigendecomposition), ``D`` and the norms of
    preconditioned leaves in ``solve_dtype`` (``None``: float64 when
    ``jax_enable_x64`` is on, else float32); ``m``, ``v`` and graft-only steps in
    the parameters' dtype; the update is cast to the parameters' dtype.

    ``update(grads, state, params=None, **extra_args)``: the extra arguments the
    trainer passes (``value_fn`` …) are ignored.  The numeric hyperparameters may be
    traced, e.g. ``optax.inject_hyperparams(shampoo)(learning_rate=1e-3)``: ``max_dim``
    (which leaves are preconditioned) is read by ``init`` only, where it is concrete.

    Diagnostics: ``preconditioned_fraction`` (share of the parameters whose step took
    the Shampoo direction), ``root_refreshed`` (1 when the roots were recomputed this
    step), ``condition_number`` (largest condition number of the damped statistics
    ``S + ε I`` at the last refresh; 0 before the first), ``grad_norm`` (‖G‖),
    ``step_norm`` (‖d‖, before the learning rate).
    """
    _check(
        {
            "learning_rate": learning_rate,
            "b1": b1,
            "b2": b2,
            "beta": beta,
            "eps": eps,
            "graft": graft,
            "graft_eps": graft_eps,
            "precondition_every": precondition_every,
            "start_preconditioning_step": start_preconditioning_step,
            "max_dim": max_dim,
        }
    )
    dtype = resolve_solve_dtype(solve_dtype)

    def preconditioned(leaf: jax.Array) -> bool:  # a leaf of size 0 (e.g. (2, 0)) has no matrix to precondition
        return leaf.ndim >= 2 and leaf.size > 0 and max(_matrix_shape(leaf)) <= _static_max_dim(max_dim)

    def init(params: PyTree) -> ShampooState:
        leaves = jax.tree_util.tree_leaves(params)
        zero = jnp.zeros((), dtype)

        def pair(leaf: jax.Array, fill: Any) -> Pair | None:
            if not preconditioned(leaf):
                return None
            rows, cols = _matrix_shape(leaf)
            return fill(rows), fill(cols)

        return ShampooState(
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params) if graft == "adam" else None,
            statistics=tuple(pair(p, lambda n: jnp.zeros((n, n), dtype)) for p in leaves),
            roots=tuple(pair(p, lambda n: jnp.eye(n, dtype=dtype)) for p in leaves),
            base=SecondOrderState(
                count=jnp.zeros((), jnp.int32),
                diagnostics={
                    "preconditioned_fraction": zero,
                    "root_refreshed": jnp.zeros((), jnp.int32),
                    "condition_number": zero,
                    "grad_norm": zero,
                    "step_norm": zero,
                },
            ),
        )

    def refresh(statistics: PerLeaf, old: PerLeaf) -> tuple[PerLeaf, jax.Array]:
        """New roots of every statistic (a non-finite one keeps its old root), the largest condition number."""
        e = jnp.asarray(eps, dtype)
        roots: list[Pair | None] = []
        conds = [jnp.zeros((), dtype)]
        for s, o in zip(statistics, old, strict=True):
            if s is None or o is None:
                roots.append(None)
                continue
            (root_l, cond_l), (root_r, cond_r) = (_inverse_fourth_root(x, e, relative_eps) for x in s)
            roots.append((_finite_or(root_l, o[0]), _finite_or(root_r, o[1])))
            conds += [cond_l, cond_r]
        return tuple(roots), jnp.max(jnp.stack(conds))

    def update(grads, state, params=None, **extra_args):
        del params, extra_args  # value_fn, predict_fn, output_loss_fn: not needed
        count = state.base.count
        t = count + 1
        treedef = jax.tree_util.tree_structure(state.mu)
        grads = jax.tree_util.tree_map(lambda g, m: g.astype(m.dtype), grads, state.mu)
        mu = optax.tree.update_moment(grads, state.mu, b1, 1)
        mu_hat = optax.tree.bias_correction(mu, b1, t)
        if graft == "adam":
            nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
            nu_hat = optax.tree.bias_correction(nu, b2, t)
            grafted = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + graft_eps), mu_hat, nu_hat)
        else:
            nu, grafted = None, mu_hat

        b = jnp.asarray(beta, dtype)
        statistics = []
        for g, s in zip(jax.tree_util.tree_leaves(grads), state.statistics, strict=True):
            if s is None:
                statistics.append(None)
                continue
            gs = g.astype(dtype).reshape(_matrix_shape(g))
            statistics.append((b * s[0] + gs @ gs.T, b * s[1] + gs.T @ gs))
        stats = tuple(statistics)

        start = jnp.asarray(start_preconditioning_step)
        active = count >= start
        refreshed = active & ((count - start) % jnp.asarray(precondition_every) == 0)
        old_cond = state.base.diagnostics["condition_number"]
        roots, cond = jax.lax.cond(refreshed, refresh, lambda _, old: (old, old_cond), stats, state.roots)

        steps, shampoo_size, total = [], 0, 0
        for m, a, r in zip(jax.tree_util.tree_leaves(mu_hat), jax.tree_util.tree_leaves(grafted), roots, strict=True):
            total += a.size
            if r is None:
                steps.append(a)
                continue
            shampoo_size += a.size
            direction = (r[0] @ m.astype(dtype).reshape(_matrix_shape(m)) @ r[1]).reshape(m.shape)
            d_norm = jnp.linalg.norm(direction)
            scale = jnp.linalg.norm(a.astype(dtype)) / jnp.where(d_norm > 0, d_norm, 1)
            steps.append(jnp.where(active, scale * direction, a.astype(dtype)).astype(a.dtype))
        step = jax.tree_util.tree_unflatten(treedef, steps)
        lr = learning_rate_at(learning_rate, count)
        updates = jax.tree_util.tree_map(lambda d: (-lr * d).astype(d.dtype), step)

        fraction = jnp.where(active, shampoo_size / max(total, 1), 0).astype(dtype)
        diagnostics = {
            "preconditioned_fraction": fraction,
            "root_refreshed": refreshed.astype(jnp.int32),
            "condition_number": cond.astype(dtype),
            "grad_norm": jnp.asarray(optax.tree.norm(grads)).astype(dtype),
            "step_norm": jnp.asarray(optax.tree.norm(step)).astype(dtype),
        }
        return updates, ShampooState(mu, nu, stats, roots, SecondOrderState(t, diagnostics))

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)
