"""Sophia, AdaHessian and Adam: closed forms on diagonal quadratics, optax equivalence, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose_config
from optax import contrib

from second_order.optim.base import collect_diagnostics
from second_order.optim.diagonal import adahessian, hutchinson_diagonal, sophia, spatial_average
from second_order.suite.config import ConfigError
from second_order.suite.optimizer_config import build_optimizer, validate_optimizer

RNG = np.random.default_rng(0)


def nested(shapes: dict, rng: np.random.Generator = RNG) -> dict:
    """A nested dict of float64 arrays with the given shapes (standard normal)."""
    return {
        k: nested(v, rng) if isinstance(v, dict) else jnp.asarray(rng.standard_normal(v)) for k, v in shapes.items()
    }


SHAPES = {"dense": {"kernel": (5, 3), "bias": (3,)}, "out": {"kernel": (3, 2)}, "scale": ()}


def diagonal_quadratic(a: dict):
    """f(w) = ½ Σ a_i w_i² (indefinite when some a_i < 0): ∇²f = diag(a)."""

    def value_fn(w):
        terms = jax.tree_util.tree_map(lambda ai, wi: 0.5 * jnp.sum(ai * wi**2), a, w)
        return sum(jax.tree_util.tree_leaves(terms))

    return value_fn


def coupled_loss(w):
    """A non-quadratic loss whose Hessian is not diagonal (for the Sophia and seed tests)."""
    flat = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(w)])
    return jnp.sum(jnp.cosh(flat)) + 0.5 * jnp.sum(flat) ** 2 + 0.1 * jnp.sum(flat**4)


def run(tx, params, value_fn, steps: int, jit: bool = True):
    """``steps`` updates along ``value_fn``'s gradient; returns every update, the final state and params."""

    def step(params, state):
        grads = jax.grad(value_fn)(params)
        updates, state = tx.update(grads, state, params, value_fn=value_fn, predict_fn=None)
        return updates, state, optax.apply_updates(params, updates)

    step_fn = jax.jit(step) if jit else step
    state, history = tx.init(params), []
    for _ in range(steps):
        updates, state, params = step_fn(params, state)
        history.append(updates)
    return history, state, params


def assert_trees_close(x, y, rtol: float = 1e-12, atol: float = 0.0) -> None:
    """Leafwise allclose (tree_map raises when the structures differ)."""

    def close(u, v):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)

    jax.tree_util.tree_map(close, x, y)


# --------------------------------------------------------------------------- AdaHessian


def test_adahessian_first_step_is_the_closed_form_on_a_diagonal_quadratic():
    a, w = nested(SHAPES), nested(SHAPES)
    value_fn = diagonal_quadratic(a)
    lr, eps = 0.3, 1e-4
    (update,), state, _ = run(adahessian(learning_rate=lr, eps=eps), w, value_fn, 1)
    g = jax.grad(value_fn)(w)
    expected = jax.tree_util.tree_map(lambda gi, ai: -lr * gi / (jnp.abs(ai) + eps), g, a)
    assert_trees_close(update, expected, rtol=1e-12)
    assert jax.tree_util.tree_leaves(update)[0].dtype == jnp.float64
    # Hutchinson is exact for a diagonal Hessian: the mean of D is the mean of |a|.
    mean_abs_a = np.mean(np.concatenate([np.abs(np.ravel(x)) for x in jax.tree_util.tree_leaves(a)]))
    diagnostics = collect_diagnostics(state)
    assert set(diagnostics) == {"hessian_diag_mean", "grad_norm", "step_norm"}
    np.testing.assert_allclose(diagnostics["hessian_diag_mean"], mean_abs_a, rtol=1e-12)
    np.testing.assert_allclose(diagnostics["grad_norm"], optax.tree_utils.tree_norm(g), rtol=1e-12)
    np.testing.assert_allclose(diagnostics["step_norm"], optax.tree_utils.tree_norm(update) / lr, rtol=1e-12)


@pytest.mark.parametrize("hessian_power, weight_decay", [(1.0, 0.0), (0.5, 0.01)])
def test_adahessian_follows_its_update_rule_over_several_steps(hessian_power, weight_decay):
    """Against a plain numpy transcription of the rule, with D = |a| exactly (diagonal Hessian)."""
    a, w0 = nested(SHAPES), nested(SHAPES)
    value_fn = diagonal_quadratic(a)
    lr, b1, b2, eps = 0.05, 0.8, 0.95, 1e-3
    tx = adahessian(lr, b1, b2, eps, hessian_power=hessian_power, weight_decay=weight_decay)
    history, _, _ = run(tx, w0, value_fn, 4)
    av = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    w = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(w0)])
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, got in enumerate(history, start=1):
        g = av * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * av**2
        d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) ** hessian_power + eps) + weight_decay * w
        u = -lr * d
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(got)]), u, rtol=1e-10)
        w = w + u


def test_spatial_average_over_flax_layouts():
    rng = np.random.default_rng(1)
    dense = jnp.asarray(rng.standard_normal((5, 3)))  # (in, out)
    conv = jnp.asarray(rng.standard_normal((3, 3, 2, 4)))  # HWIO
    bias = jnp.asarray(rng.standard_normal((4,)))
    np.testing.assert_array_equal(spatial_average(dense, 1), np.abs(dense))
    np.testing.assert_array_equal(spatial_average(bias, None), np.abs(bias))
    d = np.abs(np.asarray(dense))
    blocks = np.concatenate(
        [np.repeat(d[0:2].mean(0, keepdims=True), 2, 0), np.repeat(d[2:4].mean(0, keepdims=True), 2, 0), d[4:5]]
    )
    np.testing.assert_allclose(spatial_average(dense, 2), blocks, rtol=1e-14)  # the last block holds one input
    np.testing.assert_allclose(spatial_average(dense, None), np.broadcast_to(d.mean(0), d.shape), rtol=1e-14)
    c = np.abs(np.asarray(conv))
    np.testing.assert_allclose(spatial_average(conv), np.broadcast_to(c.mean((0, 1)), c.shape), rtol=1e-14)
    np.testing.assert_array_equal(spatial_average(conv, average_conv_kernel=False), c)
    # block_size may be traced (optax.inject_hyperparams traces every numeric default)
    traced = jax.jit(spatial_average)(dense, 2)
    np.testing.assert_allclose(traced, blocks, rtol=1e-14)


def test_adahessian_first_step_with_spatial_averaging():
    shapes = {"conv": {"kernel": (3, 3, 2, 4)}, "dense": {"kernel": (4, 3)}}
    a, w = nested(shapes), nested(shapes)
    value_fn = diagonal_quadratic(a)
    lr, eps = 0.1, 1e-4
    (update,), _, _ = run(adahessian(lr, eps=eps, block_size=None), w, value_fn, 1)
    g = jax.grad(value_fn)(w)
    ac, ad = np.abs(a["conv"]["kernel"]), np.abs(a["dense"]["kernel"])
    np.testing.assert_allclose(
        update["conv"]["kernel"], -lr * g["conv"]["kernel"] / (ac.mean((0, 1)) + eps), rtol=1e-12
    )
    np.testing.assert_allclose(update["dense"]["kernel"], -lr * g["dense"]["kernel"] / (ad.mean(0) + eps), rtol=1e-12)


def test_adahessian_probes_follow_the_seed():
    w = nested(SHAPES)
    first = [run(adahessian(0.1, seed=s), w, coupled_loss, 2)[0] for s in (0, 1)]
    diff = jax.tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)), first[0], first[1])
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-6


# --------------------------------------------------------------------------- Sophia


def test_sophia_is_optax_contrib_sophia_with_value_fn_as_obj_fn():
    w = nested(SHAPES)
    kwargs = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-3, gamma=0.05, clip_threshold=1.0, update_interval=2)
    ours, _, _ = run(sophia(0.01, **kwargs), w, coupled_loss, 5)
    ref_tx = contrib.sophia(0.01, **kwargs, hessian_diagonal_fn=contrib.hutchinson_estimator_diag_hessian())

    @jax.jit
    def ref_step(params, state):
        updates, state = ref_tx.update(jax.grad(coupled_loss)(params), state, params, obj_fn=coupled_loss)
        return updates, state, optax.apply_updates(params, updates)

    state, params, ref = ref_tx.init(w), w, []
    for _ in range(5):
        updates, state, params = ref_step(params, state)
        ref.append(updates)
    assert_trees_close(ours, ref, rtol=1e-12)


def test_sophia_default_first_step_is_finite_sign_step():
    """h = 0 at the first step: clipping (on by default) makes it -η·sign(g); a zero gradient stays 0."""
    a, w = nested(SHAPES), nested(SHAPES)
    w["scale"] = jnp.zeros(())  # g = a·w = 0 there: 0 / max(0, ε) must not be NaN
    value_fn = diagonal_quadratic(a)
    lr = 0.01
    (update,), state, _ = run(sophia(lr, weight_decay=0.0), w, value_fn, 1)
    g = jax.grad(value_fn)(w)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(update))
    assert_trees_close(update, jax.tree_util.tree_map(lambda gi: -lr * jnp.sign(gi), g), rtol=1e-14)
    diagnostics = collect_diagnostics(state)
    assert set(diagnostics) == {"clip_fraction", "hessian_mean", "grad_norm", "step_norm"}
    n = sum(x.size for x in jax.tree_util.tree_leaves(w))
    np.testing.assert_allclose(diagnostics["clip_fraction"], (n - 1) / n, rtol=1e-12)
    # after the step h = (1 − β2)·diag(a) (Hutchinson exact on a diagonal Hessian)
    mean_a = np.mean(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)]))
    np.testing.assert_allclose(diagnostics["hessian_mean"], (1 - 0.99) * mean_a, rtol=1e-10)
    np.testing.assert_allclose(diagnostics["step_norm"], np.sqrt(n - 1), rtol=1e-12)


def test_sophia_without_clipping_first_step_is_g_over_eps():
    a, w = nested(SHAPES), nested(SHAPES)
    value_fn = diagonal_quadratic(a)
    lr, eps = 0.01, 1e-3
    (update,), state, _ = run(sophia(lr, eps=eps, weight_decay=0.0, clip_threshold=None), w, value_fn, 1)
    g = jax.grad(value_fn)(w)
    assert_trees_close(update, jax.tree_util.tree_map(lambda gi: -lr * gi / eps, g), rtol=1e-12)
    assert float(collect_diagnostics(state)["clip_fraction"]) == 0.0


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize("factory", [sophia, adahessian])
def test_inject_hyperparams_learning_rate_under_jit(factory):
    w = nested(SHAPES)
    plain, _, _ = run(factory(learning_rate=0.02), w, coupled_loss, 3)
    injected_tx = optax.inject_hyperparams(factory)(learning_rate=0.02)
    injected, state, _ = run(injected_tx, w, coupled_loss, 3)
    assert_trees_close(plain, injected, rtol=1e-12)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    grads = jax.grad(coupled_loss)(w)
    zero, _ = jax.jit(lambda s: injected_tx.update(grads, s, w, value_fn=coupled_loss))(state)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree_util.tree_leaves(zero))


@pytest.mark.parametrize("factory", [sophia, adahessian])
def test_update_needs_value_fn_and_params(factory):
    w = nested(SHAPES)
    tx = factory(learning_rate=0.1)
    state = tx.init(w)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(w, state, w)
    with pytest.raises(ValueError, match="params"):
        tx.update(w, state, value_fn=coupled_loss)


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (adahessian, {"b2": 1.5}, "adahessian: b2 must lie in [0, 1), got 1.5"),
        (adahessian, {"b1": -0.1}, "adahessian: b1 must lie in [0, 1), got -0.1"),
        (adahessian, {"eps": 0.0}, "adahessian: eps must be > 0, got 0.0"),
        (adahessian, {"hessian_power": 2.0}, "adahessian: hessian_power must lie in [0, 1], got 2.0"),
        (adahessian, {"weight_decay": -1.0}, "adahessian: weight_decay must be >= 0, got -1.0"),
        (adahessian, {"block_size": 0}, "adahessian: block_size must be an integer >= 1 or null, got 0"),
        (adahessian, {"learning_rate": -0.1}, "adahessian: learning_rate must be >= 0, got -0.1"),
        (sophia, {"b2": 1.0}, "sophia: b2 must lie in [0, 1), got 1.0"),
        (sophia, {"eps": 0.0}, "sophia: eps must be > 0, got 0.0"),
        (sophia, {"gamma": -1.0}, "sophia: gamma must be >= 0, got -1.0"),
        (sophia, {"clip_threshold": 0.0}, "sophia: clip_threshold must be > 0, got 0.0"),
        (sophia, {"update_interval": 0}, "sophia: update_interval must be an integer >= 1, got 0"),
    ],
)
def test_bad_hyperparameters_raise(factory, kwargs, message):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError) as err:
        factory(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("factory", [sophia, adahessian])
def test_training_a_small_classifier_lowers_the_loss(factory):
    rng = np.random.default_rng(2)
    x, y = jnp.asarray(rng.standard_normal((64, 6))), jnp.asarray(rng.integers(0, 3, 64))
    params = {"hidden": {"kernel": nested({"k": (6, 8)}, rng)["k"] * 0.3, "bias": jnp.zeros(8)}}
    params["out"] = {"kernel": nested({"k": (8, 3)}, rng)["k"] * 0.3, "bias": jnp.zeros(3)}

    def loss(p):
        h = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        logits = h @ p["out"]["kernel"] + p["out"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = factory(learning_rate=0.02) if factory is sophia else factory(learning_rate=0.05)
    _, state, final = run(tx, params, loss, 60)
    assert float(loss(final)) < 0.8 * float(loss(params))
    assert all(bool(jnp.isfinite(v)) for v in collect_diagnostics(state).values())


# --------------------------------------------------------------------------- configs


def built(name: str, *overrides: str) -> optax.GradientTransformationExtraArgs:
    return build_optimizer(validate_optimizer(compose_config([f"optimizer={name}", *overrides])["optimizer"]))


def test_adam_yaml_builds_through_the_suite_and_is_optax_adam():
    w = nested(SHAPES)
    ours, _, _ = run(built("adam"), w, coupled_loss, 3)
    ref, _, _ = run(optax.with_extra_args_support(optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)), w, coupled_loss, 3)
    assert_trees_close(ours, ref, rtol=0.0)


@pytest.mark.parametrize("name", ["sophia", "adahessian"])
def test_yaml_builds_and_its_probes_follow_the_run_seed(name):
    cfg = compose_config([f"optimizer={name}", "seed=7"])["optimizer"]
    assert cfg["seed"] == 7
    w = nested(SHAPES)
    updates, state, _ = run(built(name), w, coupled_loss, 2)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(updates))
    assert collect_diagnostics(state)


def test_bad_yaml_value_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"optimizer\.b2 = 1\.5 is invalid: must lie in \[0, 1\)"):
        built("adahessian", "optimizer.b2=1.5")
    with pytest.raises(ConfigError, match=r"optimizer\.clip_threshold = 0\.0 is invalid: must be > 0"):
        built("sophia", "optimizer.clip_threshold=0.0")


# --------------------------------------------------------------------------- mixed dtypes


def mixed(tree: dict) -> dict:
    """``tree`` with the dense kernel and the scale in float32 (the other leaves stay float64)."""
    out = {**tree, "dense": dict(tree["dense"])}
    out["dense"]["kernel"] = out["dense"]["kernel"].astype(jnp.float32)
    out["scale"] = out["scale"].astype(jnp.float32)
    return out


def dtypes(tree) -> list:
    return [x.dtype for x in jax.tree_util.tree_leaves(tree)]


def test_hutchinson_diagonal_draws_optax_probes_and_takes_mixed_dtypes():
    """Bit for bit optax's estimator on one dtype; on mixed dtypes (where optax's jvp raises) each
    leaf's estimate is in its own dtype and exact for a diagonal Hessian (z ⊙ diag(a) z = a)."""
    w = nested(SHAPES)
    ours = hutchinson_diagonal(jax.random.PRNGKey(3))
    ref = contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3))
    step = jax.jit(lambda tx, s, p: tx.update(p, s, p, obj_fn=coupled_loss), static_argnums=0)
    s_ours, s_ref = ours.init(w), ref.init(w)
    for _ in range(3):
        (h_ours, s_ours), (h_ref, s_ref) = step(ours, s_ours, w), step(ref, s_ref, w)
        jax.tree_util.tree_map(np.testing.assert_array_equal, h_ours, h_ref)
    a, wm = mixed(nested(SHAPES)), mixed(w)
    with pytest.raises(TypeError, match="dtype"):
        ref.update(wm, ref.init(wm), wm, obj_fn=diagonal_quadratic(a))
    h, _ = jax.jit(lambda s, p: ours.update(p, s, p, obj_fn=diagonal_quadratic(a)))(ours.init(wm), wm)
    assert dtypes(h) == dtypes(wm)
    assert_trees_close(h, a, rtol=1e-6)


@pytest.mark.parametrize("factory", [sophia, adahessian])
def test_mixed_dtype_parameters_take_finite_steps_in_their_dtypes_under_jit(factory):
    """Sophia and AdaHessian used to raise in optax's Hutchinson jvp on a float32 leaf among float64 ones."""
    w = mixed(nested(SHAPES))
    tx = sophia(0.01, update_interval=1) if factory is sophia else adahessian(0.05)
    history, state, final = run(tx, w, coupled_loss, 3)
    for updates in history:
        assert dtypes(updates) == dtypes(w)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(updates))
    assert dtypes(final) == dtypes(w)
    assert all(bool(jnp.isfinite(v)) for v in collect_diagnostics(state).values())
    assert float(coupled_loss(final)) < float(coupled_loss(w))


def test_adahessian_first_step_on_mixed_dtypes_is_the_closed_form():
    a, w = mixed(nested(SHAPES)), mixed(nested(SHAPES))
    value_fn = diagonal_quadratic(a)
    lr, eps = 0.3, 1e-4
    (update,), _, _ = run(adahessian(learning_rate=lr, eps=eps), w, value_fn, 1)
    g = jax.grad(value_fn)(w)
    expected = jax.tree_util.tree_map(lambda gi, ai: -lr * gi / (jnp.abs(ai) + eps), g, a)
    assert dtypes(update) == dtypes(w)
    assert_trees_close(update, expected, rtol=1e-5)
