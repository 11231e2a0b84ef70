"""The suite's networks (the paper's MLP, the CNN) and their loss."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from second_order.suite.config import ConfigError, ModelConfig
from second_order.suite.model import (
    CNN,
    MLP,
    accuracy,
    apply_with_dense_taps,
    apply_with_taps,
    build_model,
    cross_entropy,
    describe_model,
    image_shape_of,
    param_count,
)


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


def test_cnn_shapes_layout_and_parameter_counts():
    """The preset CNN: conv 3×3 16, conv 3×3 32 (Flax HWIO kernels), 2×2 pools, Dense 10 on 28×28×1 and 32×32×3."""
    model = CNN(image_shape=(28, 28, 1), channels=(16, 32))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes == {
        "Conv_0": {"kernel": (3, 3, 1, 16), "bias": (16,)},
        "Conv_1": {"kernel": (3, 3, 16, 32), "bias": (32,)},
        "Dense_0": {"kernel": (7 * 7 * 32, 10), "bias": (10,)},
    }
    assert param_count(params) == 160 + 4640 + 15690 == 20490
    assert model.apply({"params": params}, jnp.zeros((5, 784))).shape == (5, 10)
    assert model.apply({"params": params}, jnp.zeros((2, 3, 784))).shape == (2, 3, 10)  # extra batch axes
    colour = CNN(image_shape=(32, 32, 3), channels=(16, 32), hidden=(8,))
    shapes = jax.eval_shape(colour.init, jax.random.PRNGKey(0), jnp.zeros((1, 3072)))["params"]
    assert param_count(shapes) == 448 + 4640 + (8 * 8 * 32 * 8 + 8) + (8 * 10 + 10)


def test_image_shapes_build_model_and_descriptions():
    flat = lambda n: types.SimpleNamespace(train_images=np.zeros((2, n), np.float32))  # noqa: E731
    assert image_shape_of(flat(784)) == (28, 28, 1) and image_shape_of(flat(3072)) == (32, 32, 3)
    assert image_shape_of(flat(10)) == (10,)
    told = types.SimpleNamespace(train_images=np.zeros((2, 784)), image_shape=[14, 56, 1])
    assert image_shape_of(told) == (14, 56, 1)
    mlp = ModelConfig(name="mlp", hidden=[10], num_classes=10)
    cnn = ModelConfig(name="cnn", hidden=[], channels=[16, 32], kernel_size=3, num_classes=10)
    assert isinstance(build_model(mlp, (10,)), MLP) and isinstance(build_model(cnn, (28, 28, 1)), CNN)
    assert describe_model(mlp, (28, 28, 1)) == "MLP 784-10-10"
    assert describe_model(cnn, (28, 28, 1)) == "CNN 28x28x1-16c3-32c3-10"
    with pytest.raises(ConfigError, match="needs images"):
        build_model(cnn, (10,))
    deep = ModelConfig(name="cnn", hidden=[], channels=[4] * 5, num_classes=10)
    with pytest.raises(ConfigError, match=r"model.channels = \[4, 4, 4, 4, 4\] is invalid: must have at most 4"):
        build_model(deep, (28, 28, 1))
    assert apply_with_dense_taps is apply_with_taps


@pytest.mark.parametrize(("model_name", "optimizer"), [("mlp", "kfac"), ("cnn", "adam")])
def test_the_trainers_compiled_init_is_the_eager_init_bit_for_bit(model_name, optimizer):
    """``trainer.initial_state`` (model init, cast, ``tx.init`` in one jit) equals the same calls made eagerly."""
    from conftest import compose_config

    from second_order.curvature import tree_cast
    from second_order.suite.experiment import prepare
    from second_order.suite.model import build_model
    from second_order.suite.training.trainer import initial_state

    rc, tx = prepare(compose_config([f"optimizer={optimizer}", f"model={model_name}", "data.dir=/x"]))
    model = build_model(rc.model, (28, 28, 1))
    key, sample = jax.random.PRNGKey(3), np.zeros((1, 784), np.float32)
    params = tree_cast(model.init(key, sample)["params"], jnp.float64)
    eager = (params, tx.init(params))
    compiled = initial_state(model, tx, key, sample, "float64")
    assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(eager)
    for a, b in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(eager)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
