"""Curvature operators on pytrees of parameters.

All products take and return pytrees shaped like ``params`` (nested dicts as Flax
produces), so they compose with optax and never need a Python loop over leaves.

* :func:`hvp` — Hessian-vector product ``H v = ∇²L(w) v`` by forward-over-reverse
  differentiation (Pearlmutter 1994, "Fast exact multiplication by the Hessian").
* :func:`ggn_vp` — generalized Gauss-Newton product ``G v = Jᵀ H_z J v`` where
  ``z = f(w)`` are the model outputs, ``J = ∂z/∂w`` and ``H_z = ∇²_z ℓ(z)``
  (Schraudolph 2002; Martens 2010, 2020).
* :func:`dense_hessian` — the full Hessian over the flattened parameters, built as a
  batch of Hessian-vector products against the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any
ValueFn = Callable[[PyTree], jax.Array]


def tree_cast(tree: PyTree, dtype: Any | None) -> PyTree:
    """Cast every floating leaf of ``tree`` to ``dtype`` (``None`` leaves it alone).

    Unlike ``optax.tree_utils.tree_cast``, which casts every leaf, integer and
    boolean leaves (step counters, masks, integer labels) keep their dtype.
    """
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )


def hvp(value_fn: ValueFn, params: PyTree, v: PyTree) -> PyTree:
    """Hessian-vector product ``∇²L(w) v`` (Pearlmutter 1994).

    Forward-over-reverse: ``H v = d/dε ∇L(w + ε v)|₀ = jvp(grad L, (w,), (v,))``.
    Costs about two gradient evaluations and never forms ``H``.
    """
    return jax.jvp(jax.grad(value_fn), (params,), (v,))[1]


def ggn_vp(
    predict_fn: Callable[[PyTree], jax.Array],
    output_loss_fn: Callable[[jax.Array], jax.Array],
    params: PyTree,
    v: PyTree,
) -> PyTree:
    """Generalized Gauss-Newton-vector product ``G v = Jᵀ H_z J v``.

    ``predict_fn: w ↦ z`` maps parameters to model outputs (e.g. logits of the batch),
    ``output_loss_fn: z ↦ ℓ(z)`` maps outputs to the scalar loss.  Computed as
    ``u = J v`` (jvp), ``u' = H_z u`` (Hessian-vector product of ℓ in output space),
    ``G v = Jᵀ u'`` (vjp).  ``G`` is positive semi-definite whenever ℓ is convex in z
    (cross-entropy, squared error), which is what makes CG on ``G + λI`` well posed
    (Schraudolph 2002; Martens 2010).
    """
    z, jv = jax.jvp(predict_fn, (params,), (v,))
    hjv = hvp(output_loss_fn, z, jv)
    _, vjp_fn = jax.vjp(predict_fn, params)
    return vjp_fn(hjv)[0]


def linearized_ggn_vp(
    predict_fn: Callable[[PyTree], jax.Array],
    output_loss_fn: Callable[[jax.Array], jax.Array],
    params: PyTree,
) -> Callable[[PyTree], PyTree]:
    """``v ↦ G v`` at ``params``, linearised once: the same ``G v = Jᵀ H_z J v`` as :func:`ggn_vp`.

    ``jax.linearize`` runs the forward pass of ``predict_fn`` once and keeps ``J``'s linear
    map; ``Jᵀ`` is its transpose (``jax.linear_transpose``) and ``H_z`` the linearised
    gradient of ``output_loss_fn`` at ``z``.  Each product then costs only the linear
    parts, no forward pass: what a Krylov solver with many products per point wants
    (the CG of :func:`~second_order.optim.gauss_newton`, the Krylov solvers of
    :func:`~second_order.optim.trust_region` with ``curvature="gauss_newton"``).
    """
    z, jvp_fn = jax.linearize(predict_fn, params)
    _, hz_fn = jax.linearize(jax.grad(output_loss_fn), z)
    vjp_fn = jax.linear_transpose(jvp_fn, params)

    def product(v: PyTree) -> PyTree:
        return vjp_fn(hz_fn(jvp_fn(v)))[0]

    return product


def dense_hessian(value_fn: ValueFn, params: PyTree, *, chunk_size: int | None = None) -> jax.Array:
    """The Hessian ``∇²L(w)`` as an ``(n, n)`` matrix over ``ravel_pytree(params)``.

    Row ``i`` is ``H e_i``, computed by Hessian-vector products vmapped over the
    identity (``chunk_size`` rows at a time with ``lax.map`` to bound memory; ``None``
    does all rows in one vmap).  The matrix has the dtype of the parameters.  This is
    the same matrix as ``jax.hessian`` (jacfwd of jacrev) but avoids its per-leaf block
    structure; see ``benchmarks/parts.py`` for the timing comparison.
    """
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]

    def flat_value(x: jax.Array) -> jax.Array:
        return value_fn(unravel(x))

    def row(e: jax.Array) -> jax.Array:
        return jax.jvp(jax.grad(flat_value), (flat,), (e,))[1]

    eye = jnp.eye(n, dtype=flat.dtype)
    if chunk_size is None or chunk_size >= n:
        hess = jax.vmap(row)(eye)
    else:
        hess = jax.lax.map(row, eye, batch_size=chunk_size)
    # Symmetric up to rounding; Cholesky and eigh read one triangle only.
    return hess
