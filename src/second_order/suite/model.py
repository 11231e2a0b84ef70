"""The paper's network: a ReLU MLP on flattened MNIST images."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class MLP(nn.Module):
    """x ↦ Dense(h₁) → ReLU → … → Dense(h_k) → ReLU → Dense(classes), returning logits.

    The paper's model is ``hidden=(10,)``: 784·10 + 10 + 10·10 + 10 = 7,960 parameters.
    Its log-softmax is folded into :func:`cross_entropy`, so the Gauss-Newton
    output space is the logits.
    """

    hidden: Sequence[int] = (10,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def apply_with_dense_taps(
    apply_fn: Callable[..., jax.Array], variables: Mapping[str, Any], x: jax.Array, taps: Any | None
) -> tuple[jax.Array, dict[str, Any]]:
    """``apply_fn(variables, x)`` with every ``nn.Dense`` tapped: ``(outputs, layer_inputs)``.

    Works for any Flax model whose Dense layers are ``nn.Dense`` modules, each called
    once (``nn.intercept_methods``; the model is not changed).  ``layer_inputs`` holds
    each Dense layer's input ``a`` (``(..., in)``) and ``taps`` (``None``: none) each
    layer's tap, an array shaped like its pre-activation output ``s = a W + b``
    (``(..., out)``) that is added to ``s``; both are nested dicts keyed like the
    parameters (``{"Dense_0": a₀, "Dense_1": a₁}`` for :class:`MLP`).  At zero taps
    the outputs are unchanged and ∂L/∂tap = ∂L/∂s, the back-propagated
    pre-activation gradients.
    """
    inputs: dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        if not isinstance(context.module, nn.Dense) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        *outer, last = context.module.path
        node = inputs
        for key in outer:
            node = node.setdefault(key, {})
        node[last] = args[0]
        out = next_fun(*args, **kwargs)
        if taps is None:
            return out
        tap = taps
        for key in context.module.path:
            tap = tap[key]
        return out + tap

    with nn.intercept_methods(interceptor):
        outputs = apply_fn(variables, x)
    return outputs, inputs


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of −log softmax(logits)[label]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def describe_mlp(inputs: int, hidden: Sequence[int], num_classes: int) -> str:
    """``"MLP 784-10-10"``: the layer widths, for captions and tables."""
    return "MLP " + "-".join(str(w) for w in (inputs, *hidden, num_classes))


def param_count(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
