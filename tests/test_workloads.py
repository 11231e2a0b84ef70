"""Models beyond the paper's MLP: the presets, their configs, and every optimizer on the CNN (or its refusal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, XLA_DEFAULT_LEVEL, compose_config

from second_order.suite.cli import one_line
from second_order.suite.config import ConfigError, validate
from second_order.suite.experiment import config_differences, prepare
from second_order.suite.model import build_model, describe_model, param_count
from second_order.suite.optimizer_config import init_state_shapes
from second_order.suite.training.step import make_chunk_fn

OPTIMIZERS = sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))
EXACT_NEWTON = ("newton", "newton_damped", "newton_paper_precision")
MNIST = (28, 28, 1)
PRESETS = {"mlp": 7_960, "mlp_wide": 203_530, "mlp_deep": 59_210, "cnn": 20_490}


def abstract_params(model, image_shape=MNIST, dtype="float32"):
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, int(np.prod(image_shape)))))["params"]
    return jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, dtype), shapes)


@pytest.mark.parametrize(("preset", "count"), PRESETS.items())
def test_model_presets_compose_validate_and_have_their_sizes(preset, count):
    rc = validate(compose_config([f"model={preset}", "data.dir=/x"]))
    assert rc.model.name == ("cnn" if preset == "cnn" else "mlp")
    model = build_model(rc.model, MNIST)
    assert param_count(abstract_params(model)) == count
    logits = jax.eval_shape(model.apply, {"params": abstract_params(model)}, jnp.zeros((3, 784)))
    assert logits.shape == (3, 10)
    assert (
        describe_model(rc.model, MNIST)
        == {
            "mlp": "MLP 784-10-10",
            "mlp_wide": "MLP 784-256-10",
            "mlp_deep": "MLP 784-64-64-64-10",
            "cnn": "CNN 28x28x1-16c3-32c3-10",
        }[preset]
    )


def config_error(overrides: list[str]) -> str:
    try:
        prepare(compose_config([*overrides, "data.dir=/x"]))
    except Exception as err:  # noqa: BLE001 - what the CLI would print
        message = one_line(err)
        assert message is not None, f"{type(err).__name__} is not reported as a user error: {err}"
        return message
    raise AssertionError(f"{overrides} was accepted")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.name=resnet"], "model.name = 'resnet' is invalid: must be one of mlp, cnn"),
        (["model=cnn", "model.channels=[]"], "model.channels = [] is invalid: must be a non-empty list"),
        (["model.channels=[8]"], "model.channels = [8] is invalid: must be [] for model.name = mlp"),
        (["model.hidden=[]"], "model.hidden = [] is invalid: must be a non-empty list of layer widths"),
        (["model=cnn", "model.kernel_size=0"], "model.kernel_size = 0 is invalid: must be an integer >= 1"),
        (["model=cnn", "model.channels=[16,0]"], "model.channels = [16, 0] is invalid"),
    ],
)
def test_bad_model_configs_are_one_line(overrides, expected):
    message = config_error(overrides)
    assert message.startswith(expected) and "\n" not in message, message


def test_runs_from_before_model_name_resume_as_mlps():
    new = compose_config(["data.dir=/x"])
    old = {**new, "model": {k: v for k, v in new["model"].items() if k not in ("name", "channels", "kernel_size")}}
    assert config_differences(old, new) == []
    assert config_differences(old, compose_config(["data.dir=/x", "model=cnn"])) != []
    newton = compose_config(["data.dir=/x", "optimizer=newton"])
    before = {**newton, "optimizer": {k: v for k, v in newton["optimizer"].items() if k != "max_params"}}
    assert config_differences(before, newton) == []  # a guard, not part of the experiment


@pytest.mark.parametrize("name", EXACT_NEWTON)
@pytest.mark.parametrize("preset", ["cnn", "mlp_deep", "mlp_wide"])
def test_exact_newton_refuses_models_above_max_params_in_one_line(name, preset):
    rc, tx = prepare(compose_config([f"optimizer={name}", f"model={preset}", "data.dir=/x"]))
    params = abstract_params(build_model(rc.model, MNIST), dtype=rc.model.param_dtype)
    with pytest.raises(ConfigError) as err:
        init_state_shapes(rc.optimizer, tx, params)
    message = one_line(err.value)
    n = f"{PRESETS[preset]:,}"
    assert message is not None and "\n" not in message
    assert message.startswith(f"optimizer.max_params = 10000 is invalid: must be at least the model's {n} parameters")
    assert "hessian_free" in message and "GB" in message


def test_exact_newton_runs_the_paper_model_and_any_model_when_the_limit_is_raised():
    for overrides in (
        ["model=mlp"],
        ["model=cnn", "optimizer.max_params=null"],
        ["model=cnn", "optimizer.max_params=30000"],
    ):
        rc, tx = prepare(compose_config(["optimizer=newton", *overrides, "data.dir=/x"]))
        init_state_shapes(rc.optimizer, tx, abstract_params(build_model(rc.model, MNIST)))


def synthetic_mnist(n: int = 16, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Images with a class-dependent blob (so that the loss has signal), flattened like the datasets'."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    images = rng.normal(0, 0.3, (n, 28, 28))
    for i, c in enumerate(y):
        r, col = 4 + 2 * (c // 5) * 5, 3 + 4 * (c % 5)
        images[i, r : r + 6, col : col + 4] += 2.0
    return jnp.asarray(images.reshape(n, 784), jnp.float32), jnp.asarray(y, jnp.int32)


# Shampoo's preconditioning starts at step 10 in its config: start at 1 so that the conv kernels are preconditioned.
EXTRA = {"shampoo": ["optimizer.start_preconditioning_step=1", "optimizer.precondition_every=1"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in EXACT_NEWTON])
def test_every_optimizer_takes_three_steps_on_the_cnn(name):
    """The trainer's compiled chunk (lax.scan of train_step) on the preset CNN, batches of 8."""
    rc, tx = prepare(compose_config([f"optimizer={name}", "model=cnn", "data.dir=/x", *EXTRA.get(name, [])]))
    model = build_model(rc.model, MNIST)
    x, y = synthetic_mnist()
    params = jax.tree_util.tree_map(
        lambda p: p.astype(rc.model.param_dtype), model.init(jax.random.PRNGKey(0), x[:1])["params"]
    )
    opt_state = tx.init(params)
    idx = jnp.arange(24).reshape(3, 8) % 16
    chunk = make_chunk_fn(model.apply, tx).lower(params, opt_state, x, y, idx)  # type: ignore[attr-defined]
    compiled = chunk.compile(compiler_options=XLA_DEFAULT_LEVEL)  # its run time dominates: optimize it
    new_params, opt_state, losses, params_ok, diagnostics = compiled(params, opt_state, x, y, idx)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses))) and bool(params_ok), (name, losses)
    assert not any(np.any(np.isnan(np.asarray(v))) for v in diagnostics.values()), name
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), new_params, params)
    assert moved["Conv_0"]["kernel"] and moved["Conv_1"]["kernel"], (name, moved)
    if name == "shampoo":
        assert float(diagnostics["preconditioned_fraction"][-1]) == pytest.approx((144 + 4608) / 20490)
    if name == "adahessian":  # Flax HWIO: |Hz| averaged over the 3×3 window, per (in, out)
        nu = np.asarray(opt_state.nu["Conv_1"]["kernel"])
        np.testing.assert_allclose(nu, np.broadcast_to(nu[:1, :1], nu.shape), rtol=1e-6)
        assert np.ptp(nu, axis=(2, 3)).max() > 0
