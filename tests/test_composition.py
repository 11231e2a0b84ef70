"""The optimizers in a user's own jitted loop: donated state, frozen parameters by closure."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from second_order import optim
from second_order.suite.model import apply_with_taps

MODEL = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
X = jax.random.normal(jax.random.PRNGKey(0), (32, 5))
Y = jnp.arange(32) % 3
PARAMS = MODEL.init(jax.random.PRNGKey(1), X)["params"]

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
    "newton": lambda: optim.newton(0.5, 32.0),
    "hessian_free": lambda: optim.hessian_free(0.5, 32.0),
    "hessian_free_lm": lambda: optim.hessian_free(0.5, 4.0, damping_adaptation="levenberg_marquardt"),
    "gauss_newton": lambda: optim.gauss_newton(0.5, 4.0),
    "gauss_newton_lm": lambda: optim.gauss_newton(0.5, 4.0, damping_adaptation="levenberg_marquardt"),
    "trust_region": lambda: optim.trust_region(0.1),
    "newton_lanczos": lambda: optim.trust_region(0.1, solver="gltr", curvature="gauss_newton"),
    "saddle_free_newton": lambda: optim.saddle_free_newton(1.0, 30.0),
    "online_parabola": lambda: optim.online_parabola(0.1),
    "sophia": lambda: optim.sophia(1e-2),
    "adahessian": lambda: optim.adahessian(0.15),
    "shampoo": lambda: optim.shampoo(1e-2, precondition_every=2, start_preconditioning_step=2),
    "kfac": lambda: optim.kfac(0.2, 0.3),
}


def loss_functions(frozen: dict | None = None) -> dict:
    """The extra arguments; with ``frozen``, of the parameters given merged with the frozen ones."""
    whole = (lambda p: {**frozen, **p}) if frozen else (lambda p: p)
    predict_fn = lambda p: MODEL.apply({"params": whole(p)}, X)  # noqa: E731
    output_loss_fn = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, Y).mean()  # noqa: E731
    return dict(
        value_fn=lambda p: output_loss_fn(predict_fn(p)),
        predict_fn=predict_fn,
        output_loss_fn=output_loss_fn,
        tapped_predict_fn=lambda p, taps: apply_with_taps(MODEL.apply, {"params": whole(p)}, X, taps),
    )


def train_step(tx, frozen: dict | None = None):
    def step(params, state):
        fns = loss_functions(frozen)
        loss, grads = jax.value_and_grad(fns["value_fn"])(params)
        updates, state = tx.update(grads, state, params, **fns)
        return optax.apply_updates(params, updates), state, loss

    return step


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_donated_state_steps_as_the_undonated_one(name):
    """``jax.jit(step, donate_argnums=(0, 1))``: no state leaf may share a buffer with another or a parameter."""
    tx = OPTIMIZERS[name]()
    plain, donated = jax.jit(train_step(tx)), jax.jit(train_step(tx), donate_argnums=(0, 1))
    p1, s1 = PARAMS, tx.init(PARAMS)
    p2, s2 = jax.tree_util.tree_map(jnp.copy, PARAMS), tx.init(PARAMS)
    for _ in range(3):
        p1, s1, loss1 = plain(p1, s1)
        p2, s2, loss2 = donated(p2, s2)  # "Attempt to donate the same buffer twice" when leaves are shared
        assert float(loss1) == float(loss2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.parametrize("name", ["kfac", "gauss_newton", "sophia"])
def test_frozen_layers_by_closure(name):
    """The README's recipe: the optimizer gets the trained layers only; the loss functions close over the rest."""
    frozen, trained = {"layers_0": PARAMS["layers_0"]}, {"layers_2": PARAMS["layers_2"]}
    tx = OPTIMIZERS[name]()
    step = jax.jit(train_step(tx, frozen))
    params, state = trained, tx.init(trained)
    losses = []
    for _ in range(5):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert set(params) == {"layers_2"} and losses[-1] < losses[0], losses
    if name == "kfac":
        assert set(state.factors) == {"layers_2"}  # a factor pair for the trained layer only


#: Beyond OPTIMIZERS: the solve paths whose diagnostics are "not computed" (+inf, never NaN).
NAN_FREE_VARIANTS: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
    **OPTIMIZERS,
    "newton_undamped": lambda: optim.newton(0.5, 0.0),  # eigendecomposition path
    "newton_low_rank": lambda: optim.newton(0.5, 0.0, max_rank=8),  # low-rank check, then the dense fallback
}


def nan_free_loop(tx, fns: dict, params: dict, steps: int = 3) -> tuple[dict, dict]:
    """``steps`` jitted steps under ``jax.debug_nans``: params and diagnostics after them."""

    @jax.jit
    def step(p, s):
        grads = jax.grad(fns["value_fn"])(p)
        updates, s = tx.update(grads, s, p, **fns)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    with jax.debug_nans(True):  # raises FloatingPointError at any NaN the step outputs
        for _ in range(steps):
            params, state = step(params, state)
    return params, optim.collect_diagnostics(state)


@pytest.mark.parametrize("name", list(NAN_FREE_VARIANTS))
def test_steps_under_jax_debug_nans(name):
    """A user debugging their own NaNs with ``jax_debug_nans`` is never stopped by ours."""
    params, diagnostics = nan_free_loop(NAN_FREE_VARIANTS[name](), loss_functions(), PARAMS)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(params)), name
    assert not any(bool(jnp.isnan(v)) for v in diagnostics.values()), (name, diagnostics)


#: At g = 0 (kfac needs Dense layers; Sophia's decoupled weight decay would move w off the minimum).
AT_ZERO_GRADIENT = {n: f for n, f in NAN_FREE_VARIANTS.items() if n != "kfac"} | {
    "sophia": lambda: optim.sophia(1e-2, weight_decay=0.0)
}


@pytest.mark.parametrize("name", list(AT_ZERO_GRADIENT))
def test_zero_gradient_steps_under_jax_debug_nans(name):
    """At a stationary point (g = 0: no Krylov space, no predicted reduction) nothing is 0/0."""
    target = {"a": {"w": jnp.array([1.0, -2.0, 0.5])}, "b": jnp.array(3.0)}
    predict_fn = lambda p: jnp.concatenate([p["a"]["w"] - target["a"]["w"], (p["b"] - target["b"])[None]])  # noqa: E731
    output_loss_fn = lambda z: 0.5 * jnp.sum(z**2)  # noqa: E731
    fns = dict(value_fn=lambda p: output_loss_fn(predict_fn(p)), predict_fn=predict_fn, output_loss_fn=output_loss_fn)
    params, diagnostics = nan_free_loop(AT_ZERO_GRADIENT[name](), fns, target)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, target)  # g = 0: no step
    assert not any(bool(jnp.isnan(v)) for v in diagnostics.values()), (name, diagnostics)
