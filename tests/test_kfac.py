"""K-FAC (Martens & Grosse 2015) against dense references, in float64 under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose_config
from problems import Problem, dense_ggn_ref

from second_order.optim import collect_diagnostics
from second_order.optim.kfac import DIAGNOSTIC_KEYS, kfac, kfac_layers, zero_taps
from second_order.suite.config import ConfigError
from second_order.suite.model import MLP
from second_order.suite.optimizer_config import build_optimizer, validate_optimizer
from second_order.suite.training.step import loss_functions

FEATURES, CLASSES = 4, 3


def one_layer(batch: int = 1, seed: int = 0):
    """One Dense layer ``z = x W + b`` with cross-entropy, its Problem and its tapped_predict_fn."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = {
        "Dense_0": {
            "kernel": jax.random.normal(k[0], (FEATURES, CLASSES), jnp.float64),
            "bias": 0.1 * jax.random.normal(k[1], (CLASSES,), jnp.float64),
        }
    }
    x = jax.random.normal(k[2], (batch, FEATURES), jnp.float64)
    y = jax.random.randint(k[3], (batch,), 0, CLASSES)

    def tapped(p, taps):
        z = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        return (z if taps is None else z + taps["Dense_0"]), {"Dense_0": x}

    predict = lambda p: tapped(p, None)[0]
    output_loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
    return Problem(params, predict, output_loss, lambda p: output_loss(predict(p))), tapped, x


def extra(prob: Problem, tapped) -> dict:
    return dict(
        value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn, tapped_predict_fn=tapped
    )


def run(tx, prob: Problem, tapped, state=None):
    state = tx.init(prob.params) if state is None else state
    grads = jax.grad(prob.value_fn)(prob.params)
    return jax.jit(lambda g, s, p: tx.update(g, s, p, **extra(prob, tapped)))(grads, state, prob.params)


def kfac_order(n_in: int, n_out: int) -> np.ndarray:
    """Indices into ravel_pytree's order (bias, then kernel row-major) of vec([W; bᵀ]) row-major."""
    kernel = n_out + np.arange(n_in * n_out)
    return np.concatenate([kernel, np.arange(n_out)])


def stacked_grad(prob: Problem) -> np.ndarray:
    g = jax.grad(prob.value_fn)(prob.params)["Dense_0"]
    return np.concatenate([np.asarray(g["kernel"]), np.asarray(g["bias"])[None]], axis=0)


def test_one_example_factors_equal_gauss_newton_block():
    """One layer, one example, fisher="exact": A ⊗ G is exactly the Gauss-Newton matrix Jᵀ H_z J."""
    prob, tapped, x = one_layer(batch=1)
    _, state = run(kfac(1.0, 1.0, fisher="exact"), prob, tapped)
    a, g = state.factors["Dense_0"]
    a_bar = np.append(np.asarray(x[0]), 1.0)
    np.testing.assert_allclose(a, np.outer(a_bar, a_bar), rtol=1e-13)
    order = kfac_order(FEATURES, CLASSES)
    ggn = dense_ggn_ref(prob)[np.ix_(order, order)]
    np.testing.assert_allclose(np.kron(a, g), ggn, rtol=1e-12, atol=1e-14)


def test_one_example_empirical_factors_equal_gradient_outer_product():
    prob, tapped, _ = one_layer(batch=1, seed=1)
    _, state = run(kfac(1.0, 1.0, fisher="empirical"), prob, tapped)
    a, g = state.factors["Dense_0"]
    v = stacked_grad(prob).reshape(-1)
    np.testing.assert_allclose(np.kron(a, g), np.outer(v, v), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_step_is_dense_damped_kronecker_solve(fisher):
    """π = 1: Δ = (A + √λ I)⁻¹ ∇W̄ (G + √λ I)⁻¹ = (A + √λ I)⁻¹ ⊗ (G + √λ I)⁻¹ vec(∇W̄), update −η Δ."""
    prob, tapped, _ = one_layer(batch=5, seed=2)
    lr, lam = 0.7, 0.09
    upd, state = run(kfac(lr, lam, fisher=fisher, pi_adjusted=False), prob, tapped)
    a, g = (np.asarray(f) for f in state.factors["Dense_0"])
    r = np.sqrt(lam)
    dense = np.kron(a + r * np.eye(len(a)), g + r * np.eye(len(g)))
    step = np.linalg.solve(dense, stacked_grad(prob).reshape(-1)).reshape(FEATURES + 1, CLASSES)
    np.testing.assert_allclose(upd["Dense_0"]["kernel"], -lr * step[:-1], rtol=1e-10)
    np.testing.assert_allclose(upd["Dense_0"]["bias"], -lr * step[-1], rtol=1e-10)
    diag = collect_diagnostics(state)
    assert set(diag) == set(DIAGNOSTIC_KEYS)
    assert float(diag["damping"]) == pytest.approx(lam)
    np.testing.assert_allclose(diag["step_norm"], np.linalg.norm(step), rtol=1e-10)


def test_pi_adjusted_damping():
    """π = √((tr A/dim A)/(tr G/dim G)): (A + π√λ I)⁻¹ and (G + √λ/π I)⁻¹ (Martens & Grosse §6.3)."""
    prob, tapped, _ = one_layer(batch=4, seed=3)
    lam = 0.04
    _, state = run(kfac(1.0, lam, fisher="exact"), prob, tapped)
    a, g = (np.asarray(f) for f in state.factors["Dense_0"])
    pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
    a_inv, g_inv = state.inverses["Dense_0"]
    np.testing.assert_allclose(a_inv, np.linalg.inv(a + pi * np.sqrt(lam) * np.eye(len(a))), rtol=1e-9)
    np.testing.assert_allclose(g_inv, np.linalg.inv(g + np.sqrt(lam) / pi * np.eye(len(g))), rtol=1e-9)


def mlp_batch(seed: int, batch: int = 6, hidden=(5,)):
    model = MLP(hidden=hidden, num_classes=CLASSES)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k[0], (batch, FEATURES), jnp.float64)
    y = jax.random.randint(k[1], (batch,), 0, CLASSES)
    params = model.init(k[2], x)["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    return model, params, x, y


def test_tapped_predict_fn_gives_layer_inputs_and_preactivation_gradients():
    """The contract's tapped_predict_fn on the suite's MLP, against back-propagation by hand."""
    model, params, x, y = mlp_batch(seed=4)
    fns = loss_functions(model.apply, x, y)
    z, inputs = fns.tapped_predict_fn(params, None)
    np.testing.assert_allclose(z, fns.predict_fn(params), rtol=1e-14)
    w0, b0 = params["Dense_0"]["kernel"], params["Dense_0"]["bias"]
    w1 = params["Dense_1"]["kernel"]
    s0 = x @ w0 + b0
    h = jax.nn.relu(s0)
    np.testing.assert_allclose(inputs["Dense_0"], x)
    np.testing.assert_allclose(inputs["Dense_1"], h, rtol=1e-14)
    taps = zero_taps(params, jax.eval_shape(fns.tapped_predict_fn, params, None)[1])
    assert jax.tree_util.tree_map(jnp.shape, taps) == {"Dense_0": (6, 5), "Dense_1": (6, CLASSES)}
    tap_grads = jax.jit(jax.grad(lambda t: fns.output_loss_fn(fns.tapped_predict_fn(params, t)[0])))(taps)
    ds1 = (jax.nn.softmax(z) - jax.nn.one_hot(y, CLASSES)) / len(y)
    ds0 = (ds1 @ w1.T) * (s0 > 0)
    np.testing.assert_allclose(tap_grads["Dense_1"], ds1, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(tap_grads["Dense_0"], ds0, rtol=1e-12, atol=1e-16)
    # The kernel gradient is aᵀδ: the taps and inputs reproduce backprop.
    grads = jax.grad(fns.value_fn)(params)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], x.T @ ds0, rtol=1e-12, atol=1e-16)


_STEPS: dict = {}


def mlp_step(tx, model, params, x, y, state):
    """One jitted update on the batch (x, y), compiled once per (tx, model)."""
    key = (id(tx), model)
    if key not in _STEPS:

        def step(p, s, x, y):
            fns = loss_functions(model.apply, x, y)
            return tx.update(jax.grad(fns.value_fn)(p), s, p, **fns._asdict())

        _STEPS[key] = (tx, jax.jit(step))
    return _STEPS[key][1](params, state, x, y)


def test_inverses_refreshed_only_every_inverse_every_steps_and_factor_ema():
    model, params, _, _ = mlp_batch(seed=5)
    ema = 0.8
    tx = kfac(0.1, 1e-2, inverse_every=3, ema=ema, fisher="exact")
    single_tx = kfac(0.1, 1e-2, fisher="exact")
    state = tx.init(params)
    for step in range(5):
        _, x, y = mlp_batch(seed=10 + step)[1:]
        _, new = mlp_step(tx, model, params, x, y, state)
        _, single = mlp_step(single_tx, model, params, x, y, tx.init(params))
        for k in new.factors:
            decay = min(1 - 1 / (step + 1), ema)
            for old, f, est in zip(state.factors[k], new.factors[k], single.factors[k], strict=True):
                np.testing.assert_allclose(f, decay * old + (1 - decay) * est, rtol=1e-12, atol=1e-15)
            same = all(np.array_equal(o, n) for o, n in zip(state.inverses[k], new.inverses[k], strict=True))
            assert same == (step % 3 != 0), (step, k)
        state = new
    assert int(state.base.count) == 5


def test_kfac_trains_the_mlp_and_leaves_non_dense_parameters_to_sgd():
    model, params, x, y = mlp_batch(seed=6, batch=32)
    fns = loss_functions(model.apply, x, y)
    tx = kfac(0.5, 1e-2, momentum=0.5)
    state = tx.init(params)
    loss0 = float(fns.value_fn(params))
    for _ in range(10):
        upd, state = mlp_step(tx, model, params, x, y, state)
        params = optax.apply_updates(params, upd)
    assert float(fns.value_fn(params)) < 0.8 * loss0
    assert all(np.isfinite(v) for v in collect_diagnostics(state).values())
    # An extra non-Dense leaf: its update is −η g.
    prob, tapped, _ = one_layer(batch=3, seed=7)
    params2 = {**prob.params, "scale": jnp.asarray(1.5)}
    value = lambda p: prob.output_loss_fn(p["scale"] * prob.predict_fn(p))
    tapped2 = lambda p, t: (p["scale"] * tapped(p, t)[0], tapped(p, t)[1])
    prob2 = Problem(params2, lambda p: p["scale"] * prob.predict_fn(p), prob.output_loss_fn, value)
    assert list(kfac_layers(params2)) == [("Dense_0",)]
    upd, _ = run(kfac(0.3, 1e-2), prob2, tapped2)
    np.testing.assert_allclose(upd["scale"], -0.3 * jax.grad(value)(params2)["scale"], rtol=1e-13)


def test_sampled_fisher_is_unbiased_for_the_exact_one():
    """Averaging the sampled G over many keys approaches the exact G (and A is the same)."""
    prob, tapped, _ = one_layer(batch=2, seed=8)
    _, exact = run(kfac(1.0, 1.0, fisher="exact"), prob, tapped)
    tx = kfac(1.0, 1.0, fisher="sampled")
    grads, state = jax.grad(prob.value_fn)(prob.params), tx.init(prob.params)

    def factors(key):
        return tx.update(grads, state._replace(key=key), prob.params, **extra(prob, tapped))[1].factors["Dense_0"]

    a, g = jax.jit(jax.vmap(factors))(jax.random.split(jax.random.PRNGKey(0), 2000))
    np.testing.assert_allclose(a[0], exact.factors["Dense_0"][0], rtol=1e-13)
    g_exact = np.asarray(exact.factors["Dense_0"][1])
    np.testing.assert_allclose(g.mean(axis=0), g_exact, atol=0.1 * np.abs(g_exact).max())


def test_inject_hyperparams_learning_rate():
    prob, tapped, _ = one_layer(batch=3, seed=9)
    tx = optax.inject_hyperparams(kfac, static_args=("fisher",))(learning_rate=0.2, damping=0.1, fisher="exact")
    upd, state = run(tx, prob, tapped)
    ref, _ = run(kfac(0.2, 0.1, fisher="exact"), prob, tapped)
    np.testing.assert_allclose(upd["Dense_0"]["kernel"], ref["Dense_0"]["kernel"], rtol=1e-12)
    assert set(collect_diagnostics(state)) == set(DIAGNOSTIC_KEYS)
    state.hyperparams["learning_rate"] = jnp.asarray(0.4)
    upd2, _ = run(tx, prob, tapped, state)
    # second step: same batch, factors EMA of equal estimates, inverses kept → twice the first update
    np.testing.assert_allclose(upd2["Dense_0"]["kernel"], 2 * upd["Dense_0"]["kernel"], rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"damping": -1}, "kfac: damping must be > 0"),
        ({"learning_rate": -0.5}, "kfac: learning_rate must be >= 0, got -0.5"),
        ({"momentum": 1.0}, "kfac: momentum must be in [0, 1), got 1.0"),
        ({"ema": -0.1}, "kfac: ema must be in [0, 1), got -0.1"),
        ({"inverse_every": 0}, "kfac: inverse_every must be an integer >= 1, got 0"),
        ({"fisher": "true"}, "kfac: fisher must be one of"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    args = {"learning_rate": 0.1, "damping": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        kfac(**args)


def test_update_without_tapped_predict_fn_says_how_to_pass_it():
    prob, _, _ = one_layer()
    tx = kfac(0.1)
    with pytest.raises(TypeError, match="tapped_predict_fn"):
        tx.update(jax.grad(prob.value_fn)(prob.params), tx.init(prob.params), prob.params, value_fn=prob.value_fn)


def test_a_tapped_predict_fn_without_layer_inputs_says_what_to_return():
    prob, tapped, _ = one_layer(batch=2)
    tx = kfac(0.1, 0.1)
    grads = jax.grad(prob.value_fn)(prob.params)
    with pytest.raises(TypeError, match=r"must return \(outputs, layer_inputs\)"):
        tx.update(grads, tx.init(prob.params), prob.params, tapped_predict_fn=lambda p, taps: tapped(p, taps)[0])


def test_zero_damping_is_rejected_by_name_since_the_factors_are_singular():
    """λ = 0 used to pass and give inf/NaN (G = diag(p) − ppᵀ is singular; A too for batch < fan-in + 1)."""
    with pytest.raises(ValueError, match=r"^kfac: damping must be > 0 \(.*\), got 0\.0$"):
        kfac(0.1, 0.0)
    cfg = compose_config(["optimizer=kfac", "optimizer.damping=0.0"])["optimizer"]
    with pytest.raises(ConfigError, match=r"^optimizer\.damping = 0\.0 is invalid: must be > 0"):
        build_optimizer(validate_optimizer(cfg))
    prob, tapped, _ = one_layer(batch=1)  # A is 5 × 5 of rank 1
    upd, state = run(kfac(0.1, 1e-8, fisher="exact"), prob, tapped)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(upd))
    assert np.isfinite(float(collect_diagnostics(state)["factor_condition_max"]))
