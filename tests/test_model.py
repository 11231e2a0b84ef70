"""The paper's network and its loss."""

import jax
import jax.numpy as jnp
import numpy as np

from second_order.suite.model import MLP, accuracy, cross_entropy, param_count


def test_paper_model_has_7960_parameters():
    params = MLP(hidden=(10,)).init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    assert param_count(params) == 784 * 10 + 10 + 10 * 10 + 10 == 7960


def test_width_and_depth_are_configurable():
    params = MLP(hidden=(32, 16)).init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    assert param_count(params) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    logits = MLP(hidden=()).apply(
        {"params": MLP(hidden=()).init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]}, jnp.zeros((3, 784))
    )
    assert logits.shape == (3, 10)


def test_cross_entropy_and_accuracy_closed_form():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = jnp.array([0, 2])
    expected = np.mean([-np.log(np.exp(2) / (np.exp(2) + 2)), -np.log(1 / (np.e + 2))])
    np.testing.assert_allclose(cross_entropy(logits, labels), expected, rtol=1e-6)
    assert float(accuracy(logits, labels)) == 0.5
