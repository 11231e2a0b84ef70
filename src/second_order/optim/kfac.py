"""K-FAC: Kronecker-factored approximate curvature for Dense (Martens & Grosse 2015) and conv layers (KFC).

For a Dense layer ``s = a W + b`` (Flax layout: kernel ``W`` ``(in, out)``, bias ``b``
``(out,)``) write ``ā = [a, 1]`` (``ā = a`` without a bias) and ``δ = ∂ℓₙ/∂s`` the
back-propagated pre-activation gradient of one example's loss.  The gradient of the
stacked weights ``W̄ = [W; bᵀ]`` ``(in+1, out)`` is ``E[ā δᵀ]`` and its Fisher block
``E[(ā āᵀ) ⊗ (δ δᵀ)]`` is approximated by ``A ⊗ G`` with

    A = E[ā āᵀ]   ((in+1) × (in+1)),     G = E[δ δᵀ]   (out × out),

(Martens & Grosse 2015, §3; row-major ``vec``).  Between layers the Fisher is taken
block-diagonal (§4.2), so the step is, per layer,

    Δ W̄ = (A + π√λ I)⁻¹ ∇_W̄ L (G + √λ/π I)⁻¹,    π = √((tr A/(in+1)) / (tr G/out))

with factored Tikhonov damping (§6.3; ``π = 1`` with ``pi_adjusted=False``).  ``A`` and
``G`` are exponential moving averages over steps with weight ``min(1 − 1/k, ema)`` at
step ``k`` (§5); the damped inverses are recomputed every ``inverse_every`` steps
(§8, a ``lax.cond`` on the step count) from symmetric eigendecompositions.  Other
parameters (not in a Dense or conv layer) get the plain gradient.  The update is
``−η v`` with heavy-ball momentum ``v ← μ v + Δ`` (``μ = 0``: none).

Where this departs from Martens & Grosse: λ, η and μ are fixed hyperparameters here (the
paper adapts λ by a Levenberg–Marquardt rule, §6.5, and chooses η and μ each step by
minimising the quadratic model, §7; kfac-jax's ``Optimizer`` offers these as
``use_adaptive_damping``, ``use_adaptive_learning_rate``, ``use_adaptive_momentum``), one λ
damps the factors (no separate γ, §6.6), and the default ``inverse_every`` is 5 (the
paper's T₃ is 20).  A fixed η and λ make K-FAC tunable on the same footing as the other
methods of the study.

Convolutions (KFC; Grosse & Martens 2016, "A Kronecker-factored approximate Fisher
matrix for convolution layers", §3).  A conv layer with Flax kernel ``(*window, in,
out)`` (HWIO in 2-D) is a Dense layer applied at each of the ``T`` output locations
``t`` to the input patch there, ``s_t = a_t W + b`` with ``W`` the kernel reshaped to
``(prod(window)·in, out)`` and ``a_t`` the patch in the same order
(:func:`conv_patches`).  Its gradient is ``Σ_t ā_t δ_tᵀ``; assuming activations
independent of derivatives, spatial homogeneity and spatially uncorrelated derivatives
(``E[δ_t δ_t'ᵀ] = 0`` for ``t ≠ t'``) the Fisher block is ``Ω ⊗ Γ`` with

    A = Ω = E_n[Σ_t ā_{n,t} ā_{n,t}ᵀ]   (a sum over locations),
    G = Γ = E_{n,t}[δ_{n,t} δ_{n,t}ᵀ]    (a mean over locations),

which for ``T = 1`` (a Dense layer, or a 1×1 conv on a 1×1 image) is the block above.
Any tapped layer whose input has extra row axes (weight sharing) is treated the same
way.  kfac-jax's conv blocks take both factors as means over batch and locations and
keep ``T`` as a scale of the block, whose damping is then ``λ/T``: with π-adjusted
damping the damped inverse is the same as here (π absorbs ``√T``), with ``π = 1`` it
is not (here λ is relative to ``Ω``).

Which Fisher (``fisher``): the expectation over δ needs the model's predictive
distribution, taken categorical (``softmax`` of the outputs, the cross-entropy loss
of the suite) by the two exact-in-expectation estimators:

* ``"sampled"`` (kfac-jax's default ``fisher_gradients``, Martens & Grosse §5): δ for
  one label per example drawn ``ŷ ~ softmax(z)`` (a PRNG key in the state); unbiased
  for the true Fisher, which equals the Gauss-Newton matrix for softmax
  cross-entropy;
* ``"exact"`` (kfac-jax's ``fisher_exact``): the expectation over all ``C`` labels,
  ``G = E_n[Σ_c p_c δ_c δ_cᵀ]`` (``C`` back-propagations); for one example
  (and one location) ``A ⊗ G`` is then exactly the Gauss-Newton block ``Jᵀ H_z J``
  of the layer;
* ``"empirical"`` (``fisher_empirical``): δ of the true labels (through
  ``output_loss_fn``, any loss that is a mean over the rows of the outputs).

The per-layer quantities come through the trainer's ``tapped_predict_fn`` (see
:mod:`second_order.suite.training.step`): a layer's input is ``a`` (Dense) or its
patches (conv), ``(..., prod(kernel.shape[:-1]))``.  Layers are found by structure:
a dict whose entries are a ``kernel`` of 2 or more axes and optionally a ``bias``
``(kernel.shape[-1],)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from second_order.curvature import tree_cast
from second_order.optim.base import (
    SecondOrderState,
    check_hyperparameters,
    concrete_float,
    descent_updates,
    distinct_buffers,
    require,
    resolve_solve_dtype,
)
from second_order.optim.patches import conv_patches

PyTree = Any
Path = tuple[str, ...]
__all__ = ["kfac", "kfac_layers", "zero_taps", "conv_patches", "KFACState"]
FISHERS = ("sampled", "exact", "empirical")
DIAGNOSTIC_KEYS = ("grad_norm", "step_norm", "damping", "factor_condition_max")


class KFACState(NamedTuple):
    """``base``: count and diagnostics; per layer (keyed ``"Dense_0"``, ``"outer/Conv_1"``):
    the factor EMAs ``(A, G)`` and the damped inverses; ``velocity`` the momentum buffer;
    ``key`` the PRNG key of ``fisher="sampled"``.  All arrays but ``key`` in ``solve_dtype``."""

    base: SecondOrderState
    factors: dict[str, tuple[jax.Array, jax.Array]]
    inverses: dict[str, tuple[jax.Array, jax.Array]]
    velocity: PyTree
    key: jax.Array


def kfac_layers(params: PyTree) -> dict[Path, Mapping[str, Any]]:
    """The layers of ``params`` by path: dicts of a ``kernel`` ``(..., in, out)`` (≥ 2 axes) [and ``bias`` ``(out,)``].

    A 2-D kernel is a Dense layer's ``(in, out)``, a 4-D one a 2-D conv's HWIO.
    """
    found: dict[Path, Mapping[str, Any]] = {}

    def visit(node: Any, path: Path) -> None:
        if not isinstance(node, Mapping):
            return
        kernel: Any = node.get("kernel")
        bias: Any = node.get("bias")
        if (
            set(node) <= {"kernel", "bias"}
            and getattr(kernel, "ndim", 0) >= 2
            and (bias is None or getattr(bias, "shape", None) == (kernel.shape[-1],))
        ):
            found[path] = node
            return
        for key, child in node.items():
            visit(child, (*path, str(key)))

    visit(params, ())
    return found


def get_path(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def nested(items: Mapping[Path, Any]) -> dict[str, Any]:
    """``{("a", "b"): x}`` → ``{"a": {"b": x}}``."""
    out: dict[str, Any] = {}
    for path, value in items.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def layer_input(layer_inputs: PyTree, path: Path, layer: Mapping[str, Any]) -> Any:
    """``layer_inputs`` at ``path``, checked against the layer's kernel (or a clear error)."""
    fan_in = math.prod(layer["kernel"].shape[:-1])
    try:
        a = get_path(layer_inputs, path)
    except (KeyError, TypeError, IndexError):
        a = None
    if getattr(a, "shape", (None,))[-1] != fan_in:
        got = "nothing" if a is None else f"shape {a.shape}"
        raise ValueError(
            f"kfac: tapped_predict_fn's layer_inputs hold {got} for layer {_name(path)} (kernel "
            f"{layer['kernel'].shape}); it needs (..., {fan_in}): a Dense layer's input, a conv layer's patches "
            "(conv_patches)"
        )
    return a


def zero_taps(params: PyTree, layer_inputs: PyTree) -> dict[str, Any]:
    """Zero taps for ``tapped_predict_fn``: per layer ``a.shape[:-1] + (out,)``, ``a`` its input (or shape)."""
    taps = {}
    for path, layer in kfac_layers(params).items():
        a = layer_input(layer_inputs, path, layer)
        taps[path] = jnp.zeros((*a.shape[:-1], layer["kernel"].shape[-1]), a.dtype)
    return nested(taps)


def _name(path: Path) -> str:
    return "/".join(path)


def _rows(x: jax.Array) -> jax.Array:
    return x.reshape(-1, x.shape[-1])


def _check(name: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    v = concrete_float(value)
    if v is not None and not ok(v):
        raise ValueError(f"kfac: {name} must be {what}, got {value}")


def kfac(
    learning_rate: optax.ScalarOrSchedule,
    damping: float = 1e-3,
    *,
    momentum: float = 0.0,
    ema: float = 0.95,
    inverse_every: int = 5,
    fisher: str = "sampled",
    pi_adjusted: bool = True,
    seed: int = 0,
    solve_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """K-FAC, Dense and conv layers: ``w ← w − η v``, ``v ← μ v + (A + π√λ I)⁻¹ ∇_W̄ L (G + √λ/π I)⁻¹``.

    ``update(grads, state, params, tapped_predict_fn=..., output_loss_fn=...)``
    (``output_loss_fn`` only for ``fisher="empirical"``; other extra arguments are
    ignored).  ``damping`` λ > 0 (required: undamped factors are singular — ``G`` always,
    since ``(diag(p) − p pᵀ) 1 = 0`` for softmax probabilities ``p``, and ``A`` when a batch
    has fewer rows than ``fan-in + 1``; a traced λ, e.g. injected, is not checked),
    ``momentum`` μ ∈ [0, 1), ``ema`` ∈ [0, 1) the factors'
    moving-average weight, ``inverse_every`` ≥ 1 steps between inverse refreshes (the
    first step computes them), ``fisher`` ∈ {"sampled", "exact", "empirical"},
    ``pi_adjusted`` the factored-damping π (else π = 1), ``seed`` the key of the sampled
    labels, ``solve_dtype`` (``None``: float64 with x64, else float32) the dtype of the
    factors, inverses, preconditioned gradient and momentum.  Diagnostics: ``grad_norm``,
    ``step_norm`` (of ``v``), ``damping`` and ``factor_condition_max`` (the largest
    condition number of a damped factor at the last refresh).
    """
    _check("damping", damping, lambda v: v > 0, "> 0 (the Kronecker factors are singular without it; e.g. 1e-3)")
    check_hyperparameters("kfac", learning_rate, damping)
    _check("momentum", momentum, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    _check("ema", ema, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    _check("inverse_every", inverse_every, lambda v: v >= 1 and v == int(v), "an integer >= 1")
    if fisher not in FISHERS:
        raise ValueError(f"kfac: fisher must be one of {FISHERS}, got {fisher!r}")
    dtype = resolve_solve_dtype(solve_dtype)

    def init(params: PyTree) -> KFACState:
        factors, inverses = {}, {}
        for path, layer in kfac_layers(params).items():
            n_in, n_out = math.prod(layer["kernel"].shape[:-1]) + ("bias" in layer), layer["kernel"].shape[-1]
            factors[_name(path)] = (jnp.zeros((n_in, n_in), dtype), jnp.zeros((n_out, n_out), dtype))
            inverses[_name(path)] = (jnp.eye(n_in, dtype=dtype), jnp.eye(n_out, dtype=dtype))
        diagnostics = {k: jnp.zeros((), dtype) for k in DIAGNOSTIC_KEYS}
        base = SecondOrderState(jnp.zeros((), jnp.int32), diagnostics)
        velocity = tree_cast(otu.tree_zeros_like(params), dtype)
        return KFACState(base, factors, inverses, velocity, jax.random.PRNGKey(seed))

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("kfac: update() needs params (the factors are computed there)")
        (tapped,) = require(extra_args, "kfac", "tapped_predict_fn", params=params)
        layers = kfac_layers(params)
        key, sample_key = jax.random.split(state.key)
        estimates = factor_estimates(tapped, params, layers, fisher, dtype, sample_key, extra_args)
        count = state.base.count
        decay = jnp.minimum(1.0 - 1.0 / (count + 1).astype(dtype), jnp.asarray(ema, dtype))
        factors = {
            k: tuple(decay * old + (1 - decay) * new for old, new in zip(state.factors[k], estimates[k], strict=True))
            for k in state.factors
        }
        lam = jnp.asarray(damping, dtype)
        refresh = count % jnp.asarray(inverse_every, jnp.int32) == 0
        inverses, condition = jax.lax.cond(
            refresh,
            lambda: damped_inverses(factors, lam, pi_adjusted),
            lambda: (state.inverses, state.base.diagnostics["factor_condition_max"]),
        )
        g = tree_cast(grads, dtype)
        direction = precondition(g, layers, inverses)
        velocity = otu.tree_add_scale(direction, jnp.asarray(momentum, dtype), state.velocity)
        updates = descent_updates(velocity, params, learning_rate, count)
        diagnostics = {
            "grad_norm": otu.tree_norm(g),
            "step_norm": otu.tree_norm(velocity),
            "damping": lam,
            "factor_condition_max": condition.astype(dtype),
        }
        base = SecondOrderState(count + 1, diagnostics)
        return updates, KFACState(base, factors, inverses, velocity, key)

    return optax.GradientTransformationExtraArgs(distinct_buffers(init), update)


def factor_estimates(
    tapped: Callable[[PyTree, PyTree | None], tuple[jax.Array, PyTree]],
    params: PyTree,
    layers: Mapping[Path, Mapping[str, Any]],
    fisher: str,
    dtype: Any,
    key: jax.Array,
    extra_args: Mapping[str, Any],
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """This batch's ``A = E_n[Σ_t ā āᵀ]`` and ``G = E_{n,t}[δ δᵀ]`` per layer (module docstring).

    With ``L`` the mean over the ``N`` rows of the outputs of per-row losses, the tap
    gradient of a cotangent ``u = ∂L/∂z`` is ``δ/N``, so ``G = (N²/R) Σ_rows t tᵀ`` with
    ``R = N·T`` the rows of the tap (``T`` locations per output row: 1 for a Dense
    layer of an MLP), and ``A = (1/N) Σ_rows ā āᵀ``.
    """
    shapes = jax.eval_shape(tapped, params, None)
    if not (isinstance(shapes, tuple) and len(shapes) == 2):
        raise TypeError(
            "kfac: tapped_predict_fn(params, taps) must return (outputs, layer_inputs), e.g. "
            "second_order.suite.model.apply_with_taps(model.apply, {'params': params}, x, taps)"
        )
    input_shapes = shapes[1]
    taps = zero_taps(params, input_shapes)
    z, backprop, inputs = jax.vjp(lambda t: tapped(params, t), taps, has_aux=True)
    n = math.prod(z.shape[:-1])

    if fisher == "empirical":
        (output_loss_fn,) = require(extra_args, "kfac", "output_loss_fn", params=params)
        cotangents = jax.grad(output_loss_fn)(z)[None]
    else:
        p = jax.nn.softmax(z.astype(dtype), axis=-1)
        eye = jnp.eye(z.shape[-1], dtype=dtype)
        if fisher == "sampled":
            labels = jax.random.categorical(key, jnp.log(p), axis=-1)
            cotangents = ((p - eye[labels]) / n)[None]
        else:  # exact: Σ_c p_c (p − e_c)(p − e_c)ᵀ = diag(p) − p pᵀ, one back-propagation per class c
            cotangents = jnp.moveaxis(jnp.sqrt(p)[..., None] * (p[..., None, :] - eye) / n, -2, 0)
    tap_grads = jax.vmap(lambda u: backprop(u.astype(z.dtype))[0])(cotangents)  # (S, *tap)

    out = {}
    for path, layer in layers.items():
        a = _rows(layer_input(inputs, path, layer)).astype(dtype)
        if "bias" in layer:
            a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), dtype)], axis=1)
        t = get_path(tap_grads, path).astype(dtype)
        t = t.reshape(-1, t.shape[-1])  # all samples' rows
        rows = a.shape[0]
        out[_name(path)] = (a.T @ a / n, (n * n / rows) * (t.T @ t))
    return out


def damped_inverses(
    factors: Mapping[str, tuple[jax.Array, jax.Array]], lam: jax.Array, pi_adjusted: Any
) -> tuple[dict[str, tuple[jax.Array, jax.Array]], jax.Array]:
    """``((A + π√λ I)⁻¹, (G + √λ/π I)⁻¹)`` per layer and the largest damped-factor condition number.

    π = √((tr A / dim A) / (tr G / dim G)) (Martens & Grosse 2015, §6.3), 1 when a trace
    is zero or ``pi_adjusted`` is false.  Inverses from ``eigh`` (eigenvalues clipped at 0).
    """
    inverses, conditions = {}, []
    root = jnp.sqrt(lam)
    for k, (a, g) in factors.items():
        mean_a, mean_g = jnp.trace(a) / a.shape[0], jnp.trace(g) / g.shape[0]
        ok = (mean_a > 0) & (mean_g > 0)
        pi = jnp.sqrt(jnp.where(ok, mean_a, 1.0) / jnp.where(ok, mean_g, 1.0))
        pi = jnp.where(pi_adjusted, pi, jnp.ones_like(pi))
        pair = []
        for f, shift in ((a, pi * root), (g, root / pi)):
            w, v = jnp.linalg.eigh(f)
            w = jnp.maximum(w, 0.0) + shift
            pair.append((v / w) @ v.T)
            conditions.append(w[-1] / w[0])
        inverses[k] = (pair[0], pair[1])
    condition = jnp.max(jnp.stack(conditions)) if conditions else jnp.ones((), lam.dtype)
    return inverses, condition


def precondition(
    grads: PyTree, layers: Mapping[Path, Mapping[str, Any]], inverses: Mapping[str, tuple[jax.Array, jax.Array]]
) -> PyTree:
    """Per layer ``A⁻¹ [∇W; ∇bᵀ] G⁻¹`` (``W`` the kernel as ``(fan-in, out)``) split back into kernel and bias."""

    def visit(node: Any, path: Path) -> Any:
        if path in layers:
            a_inv, g_inv = inverses[_name(path)]
            shape = node["kernel"].shape
            stacked = node["kernel"].reshape(-1, shape[-1])
            if "bias" in node:
                stacked = jnp.concatenate([stacked, node["bias"][None]], axis=0)
            step = a_inv @ stacked @ g_inv
            out = {"kernel": step[: math.prod(shape[:-1])].reshape(shape)}
            if "bias" in node:
                out["bias"] = step[-1]
            return same_mapping(node, out)
        if isinstance(node, Mapping):
            return same_mapping(node, {k: visit(v, (*path, str(k))) for k, v in node.items()})
        return node

    return visit(grads, ())


def same_mapping(like: Mapping[str, Any], items: dict[str, Any]) -> Any:
    """``items`` as a mapping of ``like``'s type (a dict, or e.g. Flax's ``FrozenDict``)."""
    mapping_type: Any = type(like)
    return items if mapping_type is dict else mapping_type(items)
