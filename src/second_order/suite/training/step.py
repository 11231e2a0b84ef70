"""One training step, and the contract between the trainer and every optimizer.

The optimizer contract
----------------------
Every optimizer is an optax ``GradientTransformationExtraArgs`` and is called as ::

    updates, opt_state = tx.update(grads, opt_state, params, **loss_functions(...))

with the same three keyword arguments for the current mini-batch, whatever the
optimizer (each one takes what it needs and ignores the rest):

* ``value_fn``: ``params → scalar`` mini-batch loss ``L(w)`` (Hessian-vector
  products, line searches, ratios ρ);
* ``predict_fn``: ``params → outputs`` ``z = f(w)``, the logits of the batch
  (Gauss-Newton, K-FAC-style methods);
* ``output_loss_fn``: ``outputs → scalar`` ``ℓ(z)``, so ``L = ℓ ∘ f``;
* ``tapped_predict_fn``: ``(params, taps) → (outputs, layer_inputs)``, ``predict_fn``
  with every Dense and conv layer tapped (K-FAC-style methods; a layer is a parameter
  dict with a ``kernel`` — Dense ``(in, out)``, conv ``(*window, in, out)``, HWIO in
  2-D — and optionally a ``bias`` ``(out,)``): ``layer_inputs`` holds each Dense
  layer's input ``a`` ``(batch, in)`` and each conv layer's input patches
  ``(batch, *out_spatial, prod(window)·in)``, ordered like the kernel reshaped to
  ``(prod(window)·in, out)`` (:func:`second_order.optim.patches.conv_patches`), so that
  every layer is ``s = a W + b`` per row; ``taps`` (``None``: no taps) holds for each
  layer an array shaped like its pre-activation output ``s`` (``(batch, out)``,
  ``(batch, *out_spatial, out)``) that the model adds to ``s``.  Both are nested dicts
  keyed like the parameters (``{"Conv_0": ..., "Dense_0": ...}``).  At zero taps the
  outputs are ``predict_fn``'s and the gradients of the loss w.r.t. the taps are the
  back-propagated pre-activation gradients ∂L/∂s.  The taps' structure comes from
  ``jax.eval_shape(tapped_predict_fn, params, None)``: a layer's tap is zeros of shape
  ``a.shape[:-1] + (kernel.shape[-1],)`` (:func:`second_order.optim.kfac.zero_taps`).
  The suite's is :func:`second_order.suite.model.apply_with_taps`.

On several devices (:mod:`.devices`) the batch these functions close over is split
over the devices and every reduction over it is global: an optimizer sees the same
functions, and computes the same step, as on one device.

Whatever diagnostics the optimizer's state carries
(:func:`second_order.optim.collect_diagnostics`) are returned per step and logged;
the trainer knows nothing optimizer-specific.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from second_order.optim import collect_diagnostics
from second_order.suite.model import apply_with_taps, cross_entropy
from second_order.suite.training.devices import Placement

PyTree = Any
ApplyFn = Callable[..., jax.Array]


class LossFunctions(NamedTuple):
    """The extra arguments every optimizer's ``update`` receives (see the module docstring)."""

    value_fn: Callable[[PyTree], jax.Array]
    predict_fn: Callable[[PyTree], jax.Array]
    output_loss_fn: Callable[[jax.Array], jax.Array]
    tapped_predict_fn: Callable[[PyTree, PyTree | None], tuple[jax.Array, PyTree]]


def loss_functions(apply_fn: ApplyFn, x: jax.Array, y: jax.Array) -> LossFunctions:
    """The batch ``(x, y)``'s loss as ``value_fn = output_loss_fn ∘ predict_fn``, and its tapped ``predict_fn``."""

    def predict_fn(params: PyTree) -> jax.Array:
        return apply_fn({"params": params}, x)

    def output_loss_fn(logits: jax.Array) -> jax.Array:
        return cross_entropy(logits, y)

    def value_fn(params: PyTree) -> jax.Array:
        return output_loss_fn(predict_fn(params))

    def tapped_predict_fn(params: PyTree, taps: PyTree | None) -> tuple[jax.Array, PyTree]:
        return apply_with_taps(apply_fn, {"params": params}, x, taps)

    return LossFunctions(value_fn, predict_fn, output_loss_fn, tapped_predict_fn)


def train_step(
    params: PyTree,
    opt_state: Any,
    batch: tuple[jax.Array, jax.Array],
    *,
    apply_fn: ApplyFn,
    tx: optax.GradientTransformationExtraArgs,
) -> tuple[PyTree, Any, jax.Array, dict[str, jax.Array]]:
    """One optimizer step on ``batch = (images, labels)``: new params, state, loss, diagnostics."""
    fns = loss_functions(apply_fn, *batch)
    loss, grads = jax.value_and_grad(fns.value_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params, **fns._asdict())
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss, collect_diagnostics(opt_state)


def make_chunk_fn(
    apply_fn: ApplyFn, tx: optax.GradientTransformationExtraArgs, placement: Placement | None = None
) -> Callable[..., Any]:
    """Jitted ``(params, opt_state, X, Y, idx[K, B]) → (params, opt_state, losses[K], params_ok, diagnostics{[K]})``.

    ``lax.scan`` of :func:`train_step` over the ``K`` batches ``X[idx[k]]``, the
    dataset resident on the device.  ``params_ok`` says whether the parameters after
    the chunk are all finite: a non-finite parameter makes every later loss
    non-finite, so per-step losses plus this one flag locate a divergence.
    With a ``placement`` (:mod:`.devices`) every input and output is replicated on
    its mesh and each batch is split over it: data parallelism, the reductions over
    the batch inserted by XLA.
    """

    def chunk(params, opt_state, x_all, y_all, idx):
        def body(carry, batch_idx):
            p, s = carry
            batch = (x_all[batch_idx], y_all[batch_idx])
            if placement is not None:
                batch = placement.constrain_batch(batch)
            p, s, loss, diagnostics = train_step(p, s, batch, apply_fn=apply_fn, tx=tx)
            return (p, s), (loss, diagnostics)

        (params, opt_state), (losses, diagnostics) = jax.lax.scan(body, (params, opt_state), idx)
        return params, opt_state, losses, all_finite(params), diagnostics

    donate = (0, 1) if jax.default_backend() != "cpu" else ()  # in-place updates (unsupported on CPU)
    if placement is None:
        return jax.jit(chunk, donate_argnums=donate)
    return jax.jit(chunk, in_shardings=placement.replicated, out_shardings=placement.replicated, donate_argnums=donate)


def all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def make_eval_fn(apply_fn: ApplyFn, placement: Placement | None = None) -> Callable[..., Any]:
    """Jitted ``(params, X, Y) → (mean loss, accuracy)`` over a whole split (split over ``placement``'s devices)."""
    from second_order.suite.model import accuracy

    def evaluate(params, x, y):
        if placement is not None:
            x, y = placement.constrain_batch((x, y))
        logits = apply_fn({"params": params}, x)
        return cross_entropy(logits, y), accuracy(logits, y)

    if placement is None:
        return jax.jit(evaluate)
    return jax.jit(evaluate, out_shardings=placement.replicated)
