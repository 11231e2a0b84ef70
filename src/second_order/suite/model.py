"""The paper's network: a ReLU MLP on flattened MNIST images."""

from __future__ import annotations

from collections.abc import Sequence

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
