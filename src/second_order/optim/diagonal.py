"""Diagonal-curvature baselines: Sophia (Liu et al. 2023) and AdaHessian (Yao et al. 2021).

Both precondition a momentum of the gradient by a stochastic estimate of the Hessian
diagonal, ``diag(H) ≈ z ⊙ H z`` for Rademacher ``z`` (Hutchinson), one
Hessian-vector product per estimate.  Adam is ``optax.adam`` (``configs/optimizer/adam.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
from optax import contrib

from second_order.optim.base import (
    SecondOrderState,
    check_hyperparameters,
    concrete_float,
    distinct_buffers,
    learning_rate_at,
    require,
)
from second_order.solvers import static_int

PyTree = Any


def _check_range(name: str, key: str, value: Any, low: float, high: float | None, closed_high: bool = False) -> None:
    """``low <= value < high`` (``<= high`` if ``closed_high``, no bound if ``high`` is None); concrete values only."""
    v = None if value is None else concrete_float(value)
    if v is None:
        return
    if high is None:
        if not v >= low:
            raise ValueError(f"{name}: {key} must be >= {low:g}, got {value}")
    elif not (low <= v <= high if closed_high else low <= v < high):
        raise ValueError(f"{name}: {key} must lie in [{low:g}, {high:g}{']' if closed_high else ')'}, got {value}")


def _check_positive(name: str, key: str, value: Any) -> None:
    v = None if value is None else concrete_float(value)
    if v is not None and not v > 0:
        raise ValueError(f"{name}: {key} must be > 0, got {value}")


def _diagnostic_dtype(params: PyTree) -> Any:
    return otu.tree_dtype(params, "highest")


def hutchinson_diagonal(key: jax.Array) -> optax.GradientTransformationExtraArgs:
    """Hutchinson's ``diag(∇²L) ≈ z ⊙ ∇²L z``, ``z`` Rademacher: one ``jax.jvp`` of ``jax.grad(obj_fn)``.

    ``update(updates, state, params, obj_fn=...)`` returns the estimate (the updates are
    ignored).  The estimator and the draws of ``optax.contrib.hutchinson_estimator_diag_hessian``
    (its state, the same key split per call, float32 signs per leaf from ``optax.tree.random_like``),
    but each leaf's probe is cast to that leaf's own dtype: optax casts every probe to the
    tree's lowest dtype, which ``jax.jvp`` rejects when the parameters' dtypes are mixed
    (e.g. one float32 leaf among float64 ones).  The signs ±1 are exact in every float
    dtype, so on a tree of one dtype the estimate is bit for bit optax's.
    """

    def init(params: PyTree) -> contrib.HutchinsonState:
        del params
        return contrib.HutchinsonState(key=key)

    def update(
        updates: PyTree,
        state: contrib.HutchinsonState,
        params: PyTree | None = None,
        obj_fn: Callable[[PyTree], jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, contrib.HutchinsonState]:
        del updates, extra_args
        if params is None or obj_fn is None:
            raise ValueError(
                "hutchinson_diagonal: update() needs params and obj_fn: update(g, state, params, obj_fn=f)"
            )
        key, subkey = jax.random.split(state.key)
        signs = otu.tree_random_like(subkey, params, jax.random.rademacher, dtype=jnp.float32)
        z = jax.tree_util.tree_map(lambda s, w: s.astype(w.dtype), signs, params)
        hz = jax.jvp(jax.grad(obj_fn), (params,), (z,))[1]
        return jax.tree_util.tree_map(jnp.multiply, z, hz), contrib.HutchinsonState(key=key)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)


# --------------------------------------------------------------------------- Sophia


class SophiaWrapperState(NamedTuple):
    """``inner``: the state of ``optax.contrib.sophia``; ``stats``: count and diagnostics."""

    inner: optax.OptState
    stats: SecondOrderState


def sophia(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Sophia-H (Liu et al. 2023): clipped momentum over an EMA of Hutchinson Hessian diagonals.

    A thin wrapper of ``optax.contrib.sophia`` (defaults are optax's) whose ``update(grads,
    state, params, value_fn=...)`` hands ``value_fn`` (``params → scalar`` mini-batch
    loss) to optax as ``obj_fn``, so Sophia takes the same extra arguments as every
    optimizer here.  With ``t`` the step (from 1)::

        m_t = β1 m_{t-1} + (1 − β1) g_t,          m̂_t = m_t / (1 − β1ᵗ)
        u_t = clip(m̂_t / max(γ h, ε), ±clip_threshold)
        w  ← w − η (u_t + weight_decay · w)
        every ``update_interval`` steps, after the step:  h ← β2 h + (1 − β2) z ⊙ ∇²L z

    with ``z`` Rademacher (seeded by ``seed``) and ``h`` starting at 0.

    First step: ``h = 0`` there (optax refreshes ``h`` *after* computing the step), so
    ``u_1 = clip(g / ε)``: with clipping on (default) that is ``±clip_threshold`` on every
    coordinate with ``|g| ≥ ε · clip_threshold`` — a finite sign-SGD step of size η per
    coordinate.  ``clip_threshold=None`` turns clipping off and the first step becomes
    ``−η g / ε`` (10⁸ η g with the default ε): finite, but a blow-up; ``eps`` must be > 0
    (with ε = 0 a coordinate with zero gradient and zero ``h``, e.g. of a dead ReLU,
    would give 0/0).  ``h`` is an EMA without bias correction, so it starts at
    ``(1 − β2)`` times the first estimate and the first hundreds of steps clip more.

    Where optax differs from the paper (Liu et al. 2023, Algorithm 3): (i) the paper
    refreshes ``h`` at steps t ≡ 1 (mod k) *before* the step, so its first step already
    sees ``(1 − β2) ĥ_1``; optax uses the previous ``h`` (0 at the first step, then one
    step stale); (ii) optax bias-corrects ``m`` (the paper and the authors' code do
    not), which only matters while ``m̂ / (γh)`` is not clipped; (iii) optax's
    Hutchinson probes are Rademacher, the paper's Gaussian.  Decoupled weight decay
    ``−η λ w`` as in the paper.  Effective ``b2`` per step is ``1 − (1 − b2) / update_interval``.
    The defaults are optax's (b1 0.965, ε 1e-8, weight decay 1e-4); the paper's GPT-2 runs
    used b1 0.96, b2 0.99, ε 1e-12, weight decay 0.2 and k = 10.

    Cost: one Hessian-vector product (``jax.jvp`` of ``jax.grad(value_fn)``) every
    ``update_interval`` steps, under ``lax.cond``, by :func:`hutchinson_diagonal` (optax's
    draws, each leaf's probe in its own dtype, so mixed-dtype parameters work).  All
    numeric hyperparameters may be traced (``optax.inject_hyperparams(sophia)(learning_rate=...)``).  Diagnostics:
    ``clip_fraction`` (fraction of coordinates clipped this step, 1 − the paper's
    "win rate"; 0 without clipping), ``hessian_mean`` (mean of ``h`` after the step),
    ``grad_norm`` (‖g‖), ``step_norm`` (‖u + weight_decay·w‖, the update divided by η).

    Liu, Li, Hall, Liang, Ma (2023), "Sophia: A Scalable Stochastic Second-order Optimizer
    for Language Model Pre-training", arXiv:2305.14342 (ICLR 2024).
    """
    name = "sophia"
    check_hyperparameters(name, learning_rate, 0.0)
    _check_range(name, "b1", b1, 0.0, 1.0)
    _check_range(name, "b2", b2, 0.0, 1.0)
    _check_positive(name, "eps", eps)
    _check_range(name, "gamma", gamma, 0.0, None)
    _check_range(name, "weight_decay", weight_decay, 0.0, None)
    _check_positive(name, "clip_threshold", clip_threshold)
    k = static_int(update_interval)
    if k is not None and (k < 1 or k != concrete_float(update_interval)):
        raise ValueError(f"{name}: update_interval must be an integer >= 1, got {update_interval}")

    def make() -> optax.GradientTransformationExtraArgs:
        hutchinson = hutchinson_diagonal(jax.random.PRNGKey(seed))
        return contrib.sophia(
            learning_rate,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            gamma=gamma,
            clip_threshold=clip_threshold,
            update_interval=update_interval,
            hessian_diagonal_fn=hutchinson,
        )

    def init(params: PyTree) -> SophiaWrapperState:
        zero = jnp.zeros((), _diagnostic_dtype(params))
        keys = ("clip_fraction", "hessian_mean", "grad_norm", "step_norm")
        stats = SecondOrderState(jnp.zeros((), jnp.int32), dict.fromkeys(keys, zero))
        return SophiaWrapperState(make().init(params), stats)

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("sophia: update() needs params (the Hessian is evaluated there)")
        (value_fn,) = require(extra_args, name, "value_fn", params=params)  # predict_fn, output_loss_fn, ...: not used
        updates, inner = make().update(grads, state.inner, params, obj_fn=value_fn)
        dtype = state.stats.diagnostics["grad_norm"].dtype
        old, new = _sophia_state(state.inner), _sophia_state(inner)
        size = otu.tree_size(params)
        if clip_threshold is None:
            clip_fraction = jnp.zeros((), dtype)
        else:
            # The ratio optax clips: m̂ / max(γ h_old, ε) with the new momentum and the old h.
            correction = 1 - jnp.asarray(b1, dtype) ** new.count.astype(dtype)
            clipped = jax.tree_util.tree_map(
                lambda m, h: jnp.sum(jnp.abs(m / correction) / jnp.maximum(gamma * h, eps) >= clip_threshold),
                new.mu,
                old.nu,
            )
            clip_fraction = (sum(jax.tree_util.tree_leaves(clipped)) / size).astype(dtype)
        lr = learning_rate_at(learning_rate, state.stats.count)
        step_norm = jnp.where(lr > 0, otu.tree_norm(updates) / jnp.where(lr > 0, lr, 1.0), 0.0)
        diagnostics = {
            "clip_fraction": clip_fraction,
            "hessian_mean": (otu.tree_sum(new.nu) / size).astype(dtype),
            "grad_norm": otu.tree_norm(grads).astype(dtype),
            "step_norm": step_norm.astype(dtype),
        }
        return updates, SophiaWrapperState(inner, SecondOrderState(state.stats.count + 1, diagnostics))

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)


def _sophia_state(inner: optax.OptState) -> Any:
    """The ``SophiaState`` inside optax's chain (the first transformation's state)."""
    found = [s for s in inner if isinstance(s, contrib.SophiaState)]
    if len(found) != 1:
        raise TypeError("sophia: optax.contrib.sophia's state no longer holds one SophiaState; update this wrapper")
    return found[0]


# --------------------------------------------------------------------------- AdaHessian


class AdaHessianState(NamedTuple):
    """``stats``: count and diagnostics; ``mu``/``nu``: EMAs of g and D²; ``probe``: Hutchinson's PRNG state."""

    stats: SecondOrderState
    mu: PyTree
    nu: PyTree
    probe: optax.OptState


def spatial_average(h: jax.Array, block_size: Any = 1, average_conv_kernel: bool = True) -> jax.Array:
    """``|h|`` averaged over AdaHessian's blocks, for Flax layouts (see :func:`adahessian`).

    * 0-D and 1-D leaves (biases, norms): ``|h|``, no averaging.
    * 2-D leaves, taken for Dense kernels ``(in, out)``: per output unit (column),
      the mean of ``|h|`` over consecutive groups of ``block_size`` input units (rows);
      the last group is shorter when ``block_size`` does not divide ``in``.
      ``block_size=None``: over all inputs of the output unit.  ``1``: no averaging.
    * ≥ 3-D leaves, taken for Flax conv kernels ``(*spatial, in, out)`` (HWIO in 2-D):
      per (in, out) pair, the mean of ``|h|`` over the spatial axes when
      ``average_conv_kernel``, else ``|h|``.

    The result has ``h``'s shape (each block's mean repeated over the block).
    """
    a = jnp.abs(h)
    if a.ndim == 2:
        if block_size is None:
            return jnp.broadcast_to(jnp.mean(a, axis=0, keepdims=True), a.shape)
        if static_int(block_size) == 1:
            return a
        n = a.shape[0]
        ids = jnp.arange(n) // block_size  # block_size may be traced: no reshape by it
        sums = jax.ops.segment_sum(a, ids, num_segments=n)
        counts = jax.ops.segment_sum(jnp.ones((n,), a.dtype), ids, num_segments=n)
        return (sums / jnp.maximum(counts, 1)[:, None])[ids]
    if a.ndim >= 3 and average_conv_kernel:
        return jnp.broadcast_to(jnp.mean(a, axis=tuple(range(a.ndim - 2)), keepdims=True), a.shape)
    return a


def adahessian(
    learning_rate: optax.ScalarOrSchedule = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    weight_decay: float = 0.0,
    block_size: int | None = 1,
    average_conv_kernel: bool = True,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian (Yao et al. 2021): Adam with the squared gradient replaced by a squared Hessian diagonal.

    With ``t`` the step (from 1), ``z`` a fresh Rademacher vector each step (seeded by
    ``seed``; its PRNG state lives in the optimizer state) and ``S`` the spatial
    averaging of :func:`spatial_average`::

        D_t = S(|z ⊙ ∇²L z|)                  (= S(|∇²L z|), since |z| = 1)
        m_t = β1 m_{t-1} + (1 − β1) g_t,     m̂_t = m_t / (1 − β1ᵗ)
        v_t = β2 v_{t-1} + (1 − β2) D_t²,    v̂_t = v_t / (1 − β2ᵗ)
        w  ← w − η (m̂_t / (√v̂_t ^ k + ε) + weight_decay · w)

    ``k = hessian_power`` ∈ [0, 1].  The Hessian-vector product is ``jax.jvp`` of
    ``jax.grad(value_fn)`` (:func:`hutchinson_diagonal`: optax's estimator, made safe for
    parameters of mixed dtypes), one per step, each leaf in its own dtype; so are ``m``
    and ``v``.  When ``∇²L`` is diagonal the estimate is exact (``z ⊙ Hz = diag(H)``)
    and, without averaging, the first step is ``−η g / (|diag H| + ε)``.

    Spatial averaging (the reference's, transposed to Flax layouts): the authors'
    image-classification code averages ``|∇²L z|`` of a conv kernel over its spatial
    window (PyTorch OIHW dims 2, 3; Flax HWIO axes 0, 1: ``average_conv_kernel``,
    default on, as there) and leaves Linear weights and biases per coordinate
    (``block_size=1``, default, as there).  Their generic version averages a Linear
    weight ``(out, in)`` over blocks of consecutive ``in`` entries of each output
    row; here a 2-D kernel ``(in, out)`` is averaged over blocks of ``block_size``
    consecutive rows (inputs) of each column (output unit), ``None`` = all inputs
    (their ``-1``).  Every 2-D leaf is taken for a Dense kernel, every ≥ 3-D leaf for
    a conv kernel ``(*spatial, in, out)``.

    Defaults are the authors' PyTorch optimizer's (amirgholami/adahessian,
    ``image_classification/optim_adahessian.py``): lr 0.15, betas (0.9, 0.999), eps
    1e-4, weight_decay 0 (decoupled, ``−η λ w`` outside the preconditioner, as there),
    hessian_power 1.  ``update(grads, state, params, value_fn=...)``.  Numeric
    hyperparameters may be traced (``optax.inject_hyperparams(adahessian)(learning_rate=...)``,
    ``block_size`` too); ``average_conv_kernel`` is static.  Diagnostics:
    ``hessian_diag_mean`` (mean of ``D_t``), ``grad_norm`` (‖g‖), ``step_norm`` (‖d‖,
    the update being ``−η d``).

    Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney (2021), "ADAHESSIAN: An Adaptive
    Second Order Optimizer for Machine Learning", AAAI.
    """
    name = "adahessian"
    check_hyperparameters(name, learning_rate, 0.0)
    _check_range(name, "b1", b1, 0.0, 1.0)
    _check_range(name, "b2", b2, 0.0, 1.0)
    _check_positive(name, "eps", eps)
    _check_range(name, "hessian_power", hessian_power, 0.0, 1.0, closed_high=True)
    _check_range(name, "weight_decay", weight_decay, 0.0, None)
    if block_size is not None:
        bs = static_int(block_size)
        if bs is not None and (bs < 1 or bs != concrete_float(block_size)):
            raise ValueError(f"{name}: block_size must be an integer >= 1 or null, got {block_size}")

    def estimator() -> optax.GradientTransformationExtraArgs:
        return hutchinson_diagonal(jax.random.PRNGKey(seed))

    def init(params: PyTree) -> AdaHessianState:
        zero = jnp.zeros((), _diagnostic_dtype(params))
        stats = SecondOrderState(
            jnp.zeros((), jnp.int32), dict.fromkeys(("hessian_diag_mean", "grad_norm", "step_norm"), zero)
        )
        zeros = otu.tree_zeros_like(params)
        return AdaHessianState(stats, zeros, zeros, estimator().init(params))

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("adahessian: update() needs params (the Hessian is evaluated there)")
        (value_fn,) = require(extra_args, name, "value_fn", params=params)
        zhz, probe = estimator().update(grads, state.probe, params, obj_fn=value_fn)
        d_hat = jax.tree_util.tree_map(lambda h: spatial_average(h, block_size, average_conv_kernel), zhz)
        t = state.stats.count + 1
        mu = otu.tree_update_moment(grads, state.mu, b1, 1)
        nu = otu.tree_update_moment_per_elem_norm(d_hat, state.nu, b2, 2)
        mu_hat = otu.tree_bias_correction(mu, b1, t)
        nu_hat = otu.tree_bias_correction(nu, b2, t)
        direction = jax.tree_util.tree_map(
            lambda m, v, w: m / (jnp.sqrt(v) ** hessian_power + eps) + weight_decay * w, mu_hat, nu_hat, params
        )
        lr = learning_rate_at(learning_rate, state.stats.count)
        updates = jax.tree_util.tree_map(lambda d, w: (-lr * d).astype(w.dtype), direction, params)
        dtype = state.stats.diagnostics["grad_norm"].dtype
        diagnostics = {
            "hessian_diag_mean": (otu.tree_sum(d_hat) / otu.tree_size(d_hat)).astype(dtype),
            "grad_norm": otu.tree_norm(grads).astype(dtype),
            "step_norm": otu.tree_norm(direction).astype(dtype),
        }
        mu = jax.tree_util.tree_map(lambda m, w: m.astype(w.dtype), mu, params)
        nu = jax.tree_util.tree_map(lambda v, w: v.astype(w.dtype), nu, params)
        return updates, AdaHessianState(SecondOrderState(t, diagnostics), mu, nu, probe)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)
