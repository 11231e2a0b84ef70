"""Convolution patches in the order of a Flax kernel: a conv layer as a Dense layer per location.

A conv layer with Flax kernel ``(*window, in, out)`` (HWIO in 2-D) computes, at each
output location, ``s = a W + b`` with ``a`` the input patch there and ``W`` the kernel
reshaped to ``(prod(window)·in, out)``.  K-FAC's conv blocks (KFC, Grosse & Martens
2016) are Kronecker factors of these patches, so a conv layer's ``tapped_predict_fn``
input is its patches (:mod:`second_order.optim.kfac`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def conv_patches(
    x: jax.Array,
    window: Sequence[int],
    strides: Sequence[int] | int = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    input_dilation: Sequence[int] | int = 1,
    kernel_dilation: Sequence[int] | int = 1,
) -> jax.Array:
    """The patches of a conv's input ``x`` ``(batch, *spatial, in)``: ``(batch, *out_spatial, prod(window)·in)``.

    Ordered like a Flax kernel ``(*window, in, out)`` reshaped to ``(prod(window)·in,
    out)`` (window axes first, input channel fastest), so that ``conv(x, kernel) =
    patches @ kernel.reshape(-1, out)``.  ``lax.conv_general_dilated_patches`` puts
    the channel slowest; the axes are moved here.  Arguments as ``lax.conv_general_dilated``'s.
    """
    n = len(window)
    if not 1 <= n <= 3 or x.ndim != n + 2:
        raise ValueError(f"conv_patches: x must be (batch, *spatial, in) with 1 to 3 spatial axes, got {x.shape}")

    def per_axis(v: Sequence[int] | int) -> tuple[int, ...]:
        return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)

    spatial = "DHW"[3 - n :]
    patches = jax.lax.conv_general_dilated_patches(
        x,
        tuple(window),
        per_axis(strides),
        padding if isinstance(padding, str) else [(int(lo), int(hi)) for lo, hi in padding],
        lhs_dilation=per_axis(input_dilation),
        rhs_dilation=per_axis(kernel_dilation),
        dimension_numbers=(f"N{spatial}C", f"OI{spatial}", f"N{spatial}C"),
        precision=jax.lax.Precision.HIGHEST,  # an identity convolution: no reduced-precision passes
    )
    channels = x.shape[-1]
    patches = patches.reshape(*patches.shape[:-1], channels, math.prod(window))
    return jnp.swapaxes(patches, -1, -2).reshape(*patches.shape[:-2], -1)
