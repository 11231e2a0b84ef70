"""The suite's networks (the paper's ReLU MLP, a small CNN), their loss, and layer taps for K-FAC.

Every model takes flattened examples ``(..., features)`` (what the datasets return)
and returns logits; :func:`build_model` makes one from the ``model`` config group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from second_order.optim.patches import conv_patches

#: The image shape of a dataset whose examples are ``features`` flat values, when the
#: dataset does not say (MNIST-like 28×28 grey, CIFAR-like 32×32 colour).
KNOWN_IMAGE_SHAPES = {784: (28, 28, 1), 3072: (32, 32, 3)}


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


class CNN(nn.Module):
    """x ↦ image → [Conv k×k (c) 'SAME' → ReLU → 2×2 max-pool] per c in ``channels`` → flatten → MLP head.

    ``x`` is ``(..., H·W·C)``, reshaped to ``image_shape = (H, W, C)``; the head is
    ``Dense(h) → ReLU`` per ``hidden`` width, then ``Dense(num_classes)`` (logits).
    The preset (``model=cnn``: channels (16, 32), 3×3 kernels, no hidden Dense layer)
    is the smallest LeNet-like network with two conv layers, chosen so that every
    curvature method still runs on a CPU: on 28×28×1, 3·3·1·16 + 16 = 160,
    3·3·16·32 + 32 = 4,640 and 7·7·32·10 + 10 = 15,690, n = 20,490 parameters
    (2.6× the paper's MLP; 25,578 on 32×32×3).  Two conv layers give K-FAC's conv
    blocks a one-channel input (A: 10 × 10) and a multi-channel one (A: 145 × 145);
    the pooling keeps the Dense head at 7·7·32 = 1,568 inputs.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    channels: Sequence[int] = (16, 32)
    kernel_size: int = 3
    hidden: Sequence[int] = ()
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != math.prod(self.image_shape):
            raise ValueError(f"CNN: inputs have {x.shape[-1]} features, image_shape {self.image_shape} needs them flat")
        batch = x.shape[:-1]
        x = x.reshape(-1, *self.image_shape)
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (self.kernel_size, self.kernel_size), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x).reshape(*batch, self.num_classes)


class ModelSpec(Protocol):
    """What :func:`build_model` reads (``second_order.suite.config.ModelConfig``)."""

    name: str
    hidden: list[int]
    channels: list[int]
    kernel_size: int
    num_classes: int


def image_shape_of(data: Any) -> tuple[int, ...]:
    """One example's shape: the dataset's ``image_shape`` if it has one, else known from its features.

    ``(H, W, C)`` for 784 (28×28×1) and 3,072 (32×32×3) features, else ``(features,)``.
    """
    shape = getattr(data, "image_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    features = math.prod(data.train_images.shape[1:])
    return KNOWN_IMAGE_SHAPES.get(features, (features,))


def build_model(config: ModelSpec, image_shape: Sequence[int]) -> nn.Module:
    """The model of the ``model`` config group for examples of ``image_shape``; ConfigError if they cannot fit."""
    if config.name == "mlp":
        return MLP(hidden=tuple(config.hidden), num_classes=config.num_classes)
    from second_order.suite.config import ConfigError

    if len(image_shape) != 3:
        raise ConfigError(
            f"model.name = 'cnn' is invalid for data of shape {tuple(image_shape)}: it needs images (H, W, C); "
            "use model=mlp"
        )
    side, blocks = min(image_shape[:2]), 0
    while side // 2 >= 1:
        side, blocks = side // 2, blocks + 1
    if len(config.channels) > blocks:
        raise ConfigError(
            f"model.channels = {list(config.channels)} is invalid: must have at most {blocks} entries for "
            f"{image_shape[0]}x{image_shape[1]} images (each block's 2x2 max-pool halves their size)"
        )
    shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    return CNN(shape, tuple(config.channels), config.kernel_size, tuple(config.hidden), config.num_classes)


def describe_model(config: ModelSpec, image_shape: Sequence[int]) -> str:
    """``"MLP 784-10-10"``, ``"CNN 28x28x1-16c3-32c3-10"`` (``16c3``: 16 channels of 3×3 conv, ReLU, max-pool)."""
    if config.name == "mlp":
        return describe_mlp(math.prod(image_shape), config.hidden, config.num_classes)
    convs = [f"{c}c{config.kernel_size}" for c in config.channels]
    return "CNN " + "-".join(
        ["x".join(map(str, image_shape)), *convs, *map(str, config.hidden), str(config.num_classes)]
    )


def apply_with_taps(
    apply_fn: Callable[..., Any], variables: Mapping[str, Any], x: jax.Array, taps: Any | None
) -> tuple[jax.Array, dict[str, Any]]:
    """``apply_fn(variables, x)`` with every ``nn.Dense`` and ``nn.Conv`` tapped: ``(outputs, layer_inputs)``.

    Works for any Flax model whose layers are ``nn.Dense`` / ``nn.Conv`` modules, each
    called once (``nn.intercept_methods``; the model is not changed).  ``layer_inputs``
    holds each Dense layer's input ``a`` ``(..., in)`` and each conv layer's input
    patches ``(batch, *out_spatial, prod(window)·in)`` in the order of its kernel
    reshaped to ``(prod(window)·in, out)`` (:func:`second_order.optim.patches.conv_patches`);
    ``taps`` (``None``: none) holds each layer's tap, an array shaped like its
    pre-activation output ``s`` (``(..., out)``; ``(batch, *out_spatial, out)``) that
    is added to ``s``.  Both are nested dicts keyed like the parameters
    (``{"Conv_0": ..., "Dense_0": ...}``); a layer missing from ``taps`` is not tapped (a
    frozen layer, when the optimizer is given only the trained parameters).  At zero taps
    the outputs are unchanged and ∂L/∂tap = ∂L/∂s, the back-propagated pre-activation
    gradients.
    """
    inputs: dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.Conv)):
            return next_fun(*args, **kwargs)
        *outer, last = module.path
        node = inputs
        for key in outer:
            node = node.setdefault(key, {})
        node[last] = args[0] if isinstance(module, nn.Dense) else _patches(module, args[0])
        out = next_fun(*args, **kwargs)
        if taps is None:
            return out
        tap = taps
        for key in module.path:
            if not isinstance(tap, Mapping) or key not in tap:
                return out  # an untapped layer (frozen, not in the parameters K-FAC was given)
            tap = tap[key]
        return out + tap

    with nn.intercept_methods(interceptor):
        outputs = apply_fn(variables, x)
    return outputs, inputs


#: The name of :func:`apply_with_taps` from when only Dense layers were tapped.
apply_with_dense_taps = apply_with_taps


def _patches(conv: nn.Conv, x: jax.Array) -> jax.Array:
    """The input patches of a plain ``nn.Conv`` call (one batch axis, zero or no padding, one group, no mask)."""
    window = (conv.kernel_size,) if isinstance(conv.kernel_size, int) else tuple(conv.kernel_size)
    padding = nn.linear.canonicalize_padding(conv.padding, len(window))
    problem = (
        f"feature_group_count = {conv.feature_group_count}" if conv.feature_group_count != 1
        else "a mask" if conv.mask is not None
        else f"padding {padding!r}" if isinstance(padding, str) and padding not in ("SAME", "VALID")
        else f"inputs of shape {x.shape}" if x.ndim != len(window) + 2
        else None
    )  # fmt: skip
    if problem is not None:
        raise ValueError(f"apply_with_taps: nn.Conv {'/'.join(conv.path)} with {problem} cannot be tapped for K-FAC")
    return conv_patches(x, window, conv.strides or 1, padding, conv.input_dilation or 1, conv.kernel_dilation or 1)


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
