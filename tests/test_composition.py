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
