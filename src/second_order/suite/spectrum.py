"""Curvature spectra of the mini-batch loss, measured in the training loop.

For a symmetric curvature matrix ``A`` over the ``n`` parameters, known only through
products ``v ↦ A v`` — the Hessian ``H = ∇²L(w)`` (:func:`second_order.curvature.hvp`)
or the generalized Gauss-Newton matrix ``G = Jᵀ H_z J``
(:func:`second_order.curvature.ggn_vp`) — :func:`spectrum` estimates:

* **extreme eigenvalues**: ``m = lanczos_steps`` steps of Lanczos with full
  reorthogonalisation (Lanczos 1950) from a random unit vector give a tridiagonal
  ``T`` (m×m); its ``k`` largest and ``k`` smallest eigenvalues (Ritz values) lie in
  ``[λ_min, λ_max]`` and converge to the extreme eigenvalues first.
* **trace**: Hutchinson's estimator ``tr A ≈ (1/p) Σᵢ vᵢᵀ A vᵢ`` with ``p =
  trace_probes`` Rademacher vectors (Hutchinson 1990), and its standard error
  ``std(vᵢᵀ A vᵢ)/√p`` (the variance is ``2(‖A‖_F² − Σᵢ Aᵢᵢ²)/p``: a few large
  eigenvalues make it noisy, about 6 % at 16 probes for the paper's network).
* **spectral density** by stochastic Lanczos quadrature (SLQ; Golub & Meurant 2010;
  Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019; PyHessian, Yao et al. 2020):
  for each of ``p = slq_probes`` Rademacher vectors ``v``, ``s = slq_steps`` Lanczos
  steps from ``v/‖v‖`` give ``T = U diag(θ) Uᵀ``, and the normalised density
  ``φ(λ) = (1/n) Σᵢ δ(λ − λᵢ)`` is approximated by ``(1/p) Σ_probes Σⱼ τⱼ² δ(λ − θⱼ)``
  with ``τⱼ = U₁ⱼ``.  The nodes ``θ`` and weights ``τ²/p`` (they sum to 1) are
  returned, and the **negative mass** ``∫_{λ < −ε} φ``: the fraction of eigenvalues
  below ``−ε``, ``ε = negative_tol · max|θ|``.  The tolerance keeps the cluster at
  zero out (most eigenvalues of a small ReLU network's mini-batch Hessian are 0 and
  SLQ puts one node, slightly off zero, on them).

The Hutchinson trace is matfree's (``stochtrace.estimator_monte_carlo_mean_and_sem``).
Lanczos is the library's own :func:`second_order.krylov.lanczos` (full
reorthogonalisation, as matfree's ``decomp.tridiag_sym(reortho="full")``), because
matfree 0.6 falls short on breakdown: when the Krylov space becomes invariant it
goes on normalising what is left (rounding noise, or a zero vector), and returns
spurious eigenvalues or NaN.  That happens in training: once exact Newton saturates
the softmax, ``H_z = 0`` (the Gauss-Newton matrix is 0: NaN) and the Hessian has rank
≈ 4 with ``|λ| ≤ 0.61`` (power iteration agrees), where matfree reported ±120 after 40
steps and ±1,238 after 100.
Ours stops at an invariant subspace of size ``r``: its ``r`` Ritz values are then
exact eigenvalues, SLQ has ``r`` nodes (the others get weight 0 and are reported as
NaN), and top/bottom values beyond ``r`` are NaN (not found).  SLQ is assembled from
the tridiagonal matrix (matfree's ``funm.monte_carlo_funm_sym`` returns one number
``tr f(A)`` per function ``f``; the density figures need the nodes and weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from matfree import stochtrace

from second_order.curvature import ggn_vp, hvp, tree_cast
from second_order.krylov import lanczos, ritz

PyTree = Any
MatVec = Callable[[PyTree], PyTree]
MATRICES = ("hessian", "gauss_newton")


@dataclasses.dataclass(frozen=True)
class SpectrumSizes:
    """How much each estimate costs: curvature products per call = ``lanczos_steps +
    trace_probes + slq_probes · slq_steps`` per matrix."""

    top_k: int = 3
    lanczos_steps: int = 40
    trace_probes: int = 16
    slq_probes: int = 4
    slq_steps: int = 30
    negative_tol: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("top_k", "lanczos_steps", "trace_probes", "slq_probes", "slq_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.top_k > self.lanczos_steps:
            raise ValueError(f"top_k = {self.top_k} exceeds lanczos_steps = {self.lanczos_steps}")
        if not 0 <= self.negative_tol < 1:
            raise ValueError(f"negative_tol = {self.negative_tol} must be in [0, 1)")

    @property
    def products(self) -> int:
        """Curvature-matrix products per matrix and call."""
        return self.lanczos_steps + self.trace_probes + self.slq_probes * self.slq_steps


def spectrum(matvec: MatVec, like: PyTree, key: jax.Array, sizes: SpectrumSizes) -> dict[str, jax.Array]:
    """Extreme eigenvalues, trace and SLQ density of the symmetric operator ``matvec``.

    ``like``: a pytree shaped like the operator's vectors (the parameters).  Returns
    ``top`` (k largest Ritz values, largest first), ``bottom`` (k smallest, smallest
    first), ``trace`` and its standard error ``trace_sem``, ``neg_mass``, ``slq_nodes``
    and ``slq_weights`` (``slq_probes · slq_steps`` each, weights summing to 1; after a
    breakdown the unused nodes are NaN with weight 0).  Pure and jittable.
    """
    flat, unravel = ravel_pytree(like)
    n = flat.shape[0]
    for name in ("lanczos_steps", "slq_steps"):
        if getattr(sizes, name) > n:
            raise ValueError(f"{name} = {getattr(sizes, name)} exceeds the {n} parameters")

    def matvec_flat(v: jax.Array) -> jax.Array:
        return ravel_pytree(matvec(unravel(v)))[0]

    k_start, k_trace, k_slq = jax.random.split(key, 3)
    theta, _, active = ritz(lanczos(matvec_flat, jax.random.normal(k_start, (n,), flat.dtype), sizes.lanczos_steps))
    count = jnp.sum(active)
    # Ritz values ascend, padding (inactive) last: the i-th smallest is theta[i], the i-th largest theta[count-1-i].
    i = jnp.arange(sizes.top_k)
    top = jnp.where(i < count, theta[jnp.clip(count - 1 - i, 0)], jnp.nan)
    bottom = jnp.where(i < count, theta[i], jnp.nan)

    sampler = stochtrace.sampler_signs(flat, num=sizes.trace_probes)
    estimator = stochtrace.estimator_monte_carlo_mean_and_sem(stochtrace.monte_carlo_trace(), sampler)
    trace, trace_sem = estimator(matvec_flat, k_trace)

    def quadrature(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        nodes, u, used = ritz(lanczos(matvec_flat, jax.random.rademacher(probe_key, (n,), flat.dtype), sizes.slq_steps))
        return jnp.where(used, nodes, jnp.nan), jnp.where(used, u[0] ** 2, 0.0)

    # lax.map, not vmap: one Krylov basis (s × n) in memory at a time.
    nodes, weights = jax.lax.map(quadrature, jax.random.split(k_slq, sizes.slq_probes))
    nodes, weights = nodes.reshape(-1), weights.reshape(-1) / sizes.slq_probes
    threshold = -sizes.negative_tol * jnp.nanmax(jnp.abs(nodes))
    return {
        "top": top,
        "bottom": bottom,
        "trace": trace,
        "trace_sem": trace_sem,
        "neg_mass": jnp.sum(jnp.where(nodes < threshold, weights, 0.0)),
        "slq_nodes": nodes,
        "slq_weights": weights,
    }


def column_names(matrices: Sequence[str], sizes: SpectrumSizes) -> list[str]:
    """The columns of ``curvature.csv`` for these matrices, in :func:`as_columns` order."""
    names: list[str] = []
    for m in matrices:
        names += [f"{m}_top{i + 1}" for i in range(sizes.top_k)]
        names += [f"{m}_bottom{i + 1}" for i in range(sizes.top_k)]
        names += [f"{m}_trace", f"{m}_trace_sem", f"{m}_neg_mass"]
        count = sizes.slq_probes * sizes.slq_steps
        names += [f"{m}_slq_node{j}" for j in range(count)] + [f"{m}_slq_weight{j}" for j in range(count)]
    return names


def as_columns(matrix: str, result: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """One matrix's :func:`spectrum` result as scalar columns (``hessian_top1``, ...)."""
    cols = {f"{matrix}_{key}": result[key] for key in ("trace", "trace_sem", "neg_mass")}
    for key, label in (("top", "top"), ("bottom", "bottom")):
        cols.update({f"{matrix}_{label}{i + 1}": v for i, v in enumerate(result[key])})
    for key, label in (("slq_nodes", "slq_node"), ("slq_weights", "slq_weight")):
        cols.update({f"{matrix}_{label}{j}": v for j, v in enumerate(result[key])})
    return cols


def is_summary_column(name: str) -> bool:
    """Scalar summaries (top/bottom eigenvalues, trace, negative mass), not SLQ nodes or weights."""
    return "_slq_" not in name


def curvature_matvecs(
    value_fn: Callable[[PyTree], jax.Array],
    predict_fn: Callable[[PyTree], jax.Array],
    output_loss_fn: Callable[[jax.Array], jax.Array],
    params: PyTree,
) -> dict[str, MatVec]:
    """``v ↦ H v`` and ``v ↦ G v`` at ``params`` for ``L = output_loss_fn ∘ predict_fn``."""
    return {
        "hessian": lambda v: hvp(value_fn, params, v),
        "gauss_newton": lambda v: ggn_vp(predict_fn, output_loss_fn, params, v),
    }


def make_curvature_probe(
    loss_functions: Callable[[jax.Array, jax.Array], Any],
    matrices: Sequence[str],
    sizes: SpectrumSizes,
    dtype: Any,
) -> Callable[..., dict[str, jax.Array]]:
    """Jitted ``(params, X, Y, batch_idx, key) → {column: scalar}`` on the batch ``X[batch_idx]``.

    ``loss_functions(x, y)`` returns the batch's ``value_fn``, ``predict_fn`` and
    ``output_loss_fn`` (the trainer's :func:`~second_order.suite.training.step.loss_functions`
    with the model bound); the parameters are cast to ``dtype`` first (float64: the
    curvature measured as precisely as the solves that use it).
    """
    unknown = [m for m in matrices if m not in MATRICES]
    if unknown or not matrices:
        raise ValueError(f"matrices = {list(matrices)}: choose from {', '.join(MATRICES)}")

    def probe(params, x_all, y_all, batch_idx, key):
        params = tree_cast(params, dtype)
        fns = loss_functions(x_all[batch_idx], y_all[batch_idx])
        ops = curvature_matvecs(fns.value_fn, fns.predict_fn, fns.output_loss_fn, params)
        cols: dict[str, jax.Array] = {}
        for i, m in enumerate(matrices):
            cols.update(as_columns(m, spectrum(ops[m], params, jax.random.fold_in(key, i), sizes)))
        return cols

    return jax.jit(probe)
