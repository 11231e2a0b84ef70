"""Curvature products against dense matrices built independently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from problems import dense_ggn_ref, dense_hessian_ref, make_problem, random_like

from second_order.curvature import dense_hessian, ggn_vp, hvp, linearized_ggn_vp

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "softplus": jax.nn.softplus}


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_hvp_matches_dense_hessian(act):
    prob = make_problem(seed=1, activation=ACTIVATIONS[act])
    v = random_like(prob.params, 2)
    out = jax.jit(lambda p, v: hvp(prob.value_fn, p, v))(prob.params, v)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(prob.params)
    expected = dense_hessian_ref(prob) @ np.asarray(ravel_pytree(v)[0])
    np.testing.assert_allclose(ravel_pytree(out)[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_ggn_vp_matches_dense_ggn(act):
    prob = make_problem(seed=3, activation=ACTIVATIONS[act])
    v = random_like(prob.params, 4)
    out = jax.jit(lambda p, v: ggn_vp(prob.predict_fn, prob.output_loss_fn, p, v))(prob.params, v)
    g_ref = dense_ggn_ref(prob)
    np.testing.assert_allclose(ravel_pytree(out)[0], g_ref @ np.asarray(ravel_pytree(v)[0]), rtol=1e-10, atol=1e-12)
    # The GGN is PSD for cross-entropy, unlike the Hessian of the tanh network.
    assert np.linalg.eigvalsh(g_ref).min() > -1e-12


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linearized_ggn_vp_matches_dense_ggn_for_every_product(act):
    """Linearised once, applied to many vectors (as a Krylov solver does): each product is G v."""
    prob = make_problem(seed=3, activation=ACTIVATIONS[act])
    vs = [random_like(prob.params, s) for s in (4, 5, 6)]

    @jax.jit
    def products(p, vs):
        product = linearized_ggn_vp(prob.predict_fn, prob.output_loss_fn, p)
        return [product(v) for v in vs]

    g_ref = dense_ggn_ref(prob)
    for v, out in zip(vs, products(prob.params, vs)):
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(prob.params)
        np.testing.assert_allclose(ravel_pytree(out)[0], g_ref @ np.asarray(ravel_pytree(v)[0]), rtol=1e-10, atol=1e-12)


def test_ggn_equals_hessian_for_linear_model():
    """For a model linear in w, J does not depend on w and G = H exactly."""
    prob = make_problem(seed=5, activation=lambda x: x)
    lin = prob._replace(
        predict_fn=lambda p: prob.predict_fn({**p, "Dense_1": {"kernel": jnp.eye(3), "bias": p["Dense_1"]["bias"]}})
    )
    lin = lin._replace(value_fn=lambda p: lin.output_loss_fn(lin.predict_fn(p)))
    params = {"Dense_0": prob.params["Dense_0"], "Dense_1": {"bias": prob.params["Dense_1"]["bias"]}}
    lin = lin._replace(params=params)
    np.testing.assert_allclose(dense_ggn_ref(lin), dense_hessian_ref(lin), atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_dense_hessian_matches_jax_hessian(chunk_size):
    prob = make_problem(seed=7, activation=jax.nn.relu)
    h = jax.jit(lambda p: dense_hessian(prob.value_fn, p, chunk_size=chunk_size))(prob.params)
    np.testing.assert_allclose(h, dense_hessian_ref(prob), rtol=1e-10, atol=1e-12)


def test_dense_hessian_float32():
    prob = make_problem(seed=8, dtype=jnp.float32)
    h = dense_hessian(prob.value_fn, prob.params)
    assert h.dtype == jnp.float32
    np.testing.assert_allclose(h, dense_hessian_ref(prob), rtol=1e-4, atol=1e-5)
