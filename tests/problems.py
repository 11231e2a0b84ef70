"""Small random networks with nested-dict parameters and their dense references."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree


class Problem(NamedTuple):
    params: dict
    predict_fn: Callable
    output_loss_fn: Callable
    value_fn: Callable


def make_problem(
    seed: int = 0,
    activation: Callable = jnp.tanh,
    batch: int = 6,
    features: int = 4,
    hidden: int = 3,
    classes: int = 3,
    dtype=jnp.float64,
) -> Problem:
    """A 2-layer MLP with cross-entropy on random data; params as Flax-style nested dicts."""
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    f64 = jnp.float64  # draw in float64 so that every dtype sees the same numbers
    params = {
        "Dense_0": {
            "kernel": jax.random.normal(k[0], (features, hidden), f64),
            "bias": 0.1 * jax.random.normal(k[1], (hidden,), f64),
        },
        "Dense_1": {
            "kernel": jax.random.normal(k[2], (hidden, classes), f64),
            "bias": 0.1 * jax.random.normal(k[3], (classes,), f64),
        },
    }
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    x = jax.random.normal(k[4], (batch, features), f64).astype(dtype)
    y = jax.random.randint(k[5], (batch,), 0, classes)

    def predict_fn(p):
        h = activation(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]

    def output_loss_fn(z):
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    return Problem(params, predict_fn, output_loss_fn, lambda p: output_loss_fn(predict_fn(p)))


def dense_hessian_ref(problem: Problem) -> np.ndarray:
    """H = jax.hessian of the loss over the flattened parameters (jitted, as every reference here: one
    compilation instead of one per operation)."""
    flat, unravel = ravel_pytree(problem.params)
    return np.asarray(jax.jit(jax.hessian(lambda w: problem.value_fn(unravel(w))))(flat))


def dense_ggn_ref(problem: Problem) -> np.ndarray:
    """G = Jᵀ H_z J from the full Jacobian and the output-space Hessian."""
    flat, unravel = ravel_pytree(problem.params)
    z = jax.jit(problem.predict_fn)(problem.params)
    jac = np.asarray(jax.jit(jax.jacobian(lambda w: problem.predict_fn(unravel(w))))(flat)).reshape(z.size, -1)
    h_z = np.asarray(jax.jit(jax.hessian(problem.output_loss_fn))(z)).reshape(z.size, z.size)
    return jac.T @ h_z @ jac


def flat_grad(problem: Problem) -> np.ndarray:
    return np.asarray(ravel_pytree(jax.jit(jax.grad(problem.value_fn))(problem.params))[0])


def random_like(params: dict, seed: int) -> dict:
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype))


def with_params_dtype(problem: Problem, dtype) -> Problem:
    """The same loss (data keep their dtype) at the parameters cast to ``dtype``."""
    return problem._replace(params=jax.tree_util.tree_map(lambda a: a.astype(dtype), problem.params))


def recording(problem: Problem, seen: list) -> Problem:
    """``problem`` whose functions record the dtypes of the parameters they are traced with."""

    def note(p):
        seen.extend({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(p)})

    def predict_fn(p):
        note(p)
        return problem.predict_fn(p)

    def value_fn(p):
        note(p)
        return problem.value_fn(p)

    return problem._replace(predict_fn=predict_fn, value_fn=value_fn)
