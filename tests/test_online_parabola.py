"""online_parabola: the fitted parabola on quadratics, the SGD fallback, the orthogonal momentum SGD."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose_config
from jax.flatten_util import ravel_pytree
from problems import make_problem, with_params_dtype

from second_order.optim import collect_diagnostics
from second_order.optim.online_parabola import online_parabola

LR = 0.1
DIAGNOSTICS = {"curvature", "parabola_step", "well_posed", "position_std", "grad_norm", "step_norm"}


def nested(flat: np.ndarray) -> dict:
    """A 5-vector as nested-dict parameters {"w": {"x": (3,), "y": (2,)}}."""
    v = jnp.asarray(flat, jnp.float64)
    return {"w": {"x": v[:3], "y": v[3:]}}


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def run(tx, value_fn, params, steps: int, extra: bool = True):
    """``steps`` jitted updates on ``value_fn``; per step (params before, update, diagnostics, state after)."""
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(value_fn)(params)
        kwargs = {"value_fn": value_fn, "predict_fn": None, "output_loss_fn": None} if extra else {}
        updates, state = tx.update(grads, state, params, **kwargs)
        return optax.apply_updates(params, updates), updates, state

    history = []
    for _ in range(steps):
        new, updates, state = step(params, state)
        history.append((params, updates, collect_diagnostics(state), state))
        params = new
    return params, history


def direction(state) -> np.ndarray:
    """v̂ of the next step: the direction of the gradient EMA in ``state``."""
    g = flat(state.gradient_mean)
    return g / np.linalg.norm(g)


def fitted_minimum(state, v: np.ndarray) -> float:
    """p = ⟨w̄, v̂⟩ − ⟨ḡ, v̂⟩ / λ from the state after a step (in the coordinate of that step's v̂)."""
    lam = float(state.position_grad_cov / state.position_var)
    return float(flat(state.position_mean) @ v - flat(state.gradient_mean) @ v / lam)


U = np.array([1.0, -2.0, 0.5, 3.0, 1.5]) / np.linalg.norm([1.0, -2.0, 0.5, 3.0, 1.5])
W0 = np.array([0.3, -1.0, 2.0, 0.7, -0.4])


@pytest.mark.parametrize("beta,momentum", [(0.9, 0.9), (0.5, 0.0), (0.99, 0.5)])
def test_fits_quadratic_along_fixed_direction_and_lands_on_minimum(beta, momentum):
    a, c = 3.0, 1.7  # f = ½ a (⟨w, u⟩ − c)², gradient always along u
    value_fn = lambda p: 0.5 * a * (jnp.dot(ravel_pytree(p)[0], U) - c) ** 2
    tx = online_parabola(LR, beta=beta, momentum=momentum, max_step=None)
    final, hist = run(tx, value_fn, nested(W0), steps=6)

    # Step 0: no spread of positions yet, the momentum-SGD step (−η g).
    _, upd0, diag0, _ = hist[0]
    theta0 = W0 @ U
    np.testing.assert_allclose(flat(upd0), -LR * a * (theta0 - c) * U, rtol=1e-14, atol=1e-15)
    assert int(diag0["well_posed"]) == 0
    # Step 1: two points on the line g = a (θ − c) → λ = a, p = c, and the step lands on c.
    p1, upd1, diag1, state1 = hist[1]
    assert int(diag1["well_posed"]) == 1
    np.testing.assert_allclose(float(diag1["curvature"]), a, rtol=1e-12)
    v = direction(hist[0][3])
    np.testing.assert_allclose(abs(v @ U), 1.0, rtol=1e-14)
    np.testing.assert_allclose(fitted_minimum(state1, v) * (v @ U), c, rtol=1e-12)
    w2 = flat(p1) + flat(upd1)
    np.testing.assert_allclose(w2 @ U, c, rtol=1e-12)
    # Nothing moves orthogonally to u (the gradients never had such a component).
    np.testing.assert_allclose(w2 - (w2 @ U) * U, W0 - theta0 * U, atol=1e-14)
    np.testing.assert_allclose(float(diag1["parabola_step"]), (c - flat(p1) @ U) * (v @ U), rtol=1e-12)
    # Later steps stay at the minimum, the fit still exact.
    for _, _, diag, _ in hist[2:]:
        assert int(diag["well_posed"]) == 1
        np.testing.assert_allclose(float(diag["curvature"]), a, rtol=1e-10)
    np.testing.assert_allclose(flat(final) @ U, c, rtol=1e-12)


def test_one_dimensional_parameter():
    a, c = 0.25, -4.0
    value_fn = lambda p: 0.5 * a * (p["w"]["x"] - c) ** 2
    final, hist = run(online_parabola(LR, max_step=None), value_fn, {"w": {"x": jnp.asarray(2.0)}}, steps=3)
    np.testing.assert_allclose(float(hist[1][2]["curvature"]), a, rtol=1e-12)
    np.testing.assert_allclose(float(final["w"]["x"]), c, rtol=1e-12)


def test_step_fraction_goes_part_of_the_way():
    a, c = 3.0, 1.7
    value_fn = lambda p: 0.5 * a * (jnp.dot(ravel_pytree(p)[0], U) - c) ** 2
    final, hist = run(online_parabola(LR, step_fraction=0.25, max_step=None), value_fn, nested(W0), steps=6)
    thetas = [flat(params) @ U for params, *_ in hist] + [flat(final) @ U]
    for k in range(1, 6):
        np.testing.assert_allclose(float(hist[k][2]["curvature"]), a, rtol=1e-10)
        np.testing.assert_allclose(thetas[k + 1] - c, 0.75 * (thetas[k] - c), rtol=1e-10)


def test_negative_curvature_steps_away_from_the_maximum():
    a = 2.0  # f = −½ a ⟨w, u⟩²: a maximum at θ = 0 along u
    value_fn = lambda p: -0.5 * a * jnp.dot(ravel_pytree(p)[0], U) ** 2
    final, hist = run(online_parabola(LR, max_step=None), value_fn, nested(W0), steps=5)
    thetas = [flat(params) @ U for params, *_ in hist] + [flat(final) @ U]
    np.testing.assert_allclose(thetas[1], thetas[0] * (1 + LR * a), rtol=1e-14)  # SGD ascends the slope
    for k, (_, _, diag, _) in enumerate(hist[1:], start=1):
        assert int(diag["well_posed"]) == 1
        np.testing.assert_allclose(float(diag["curvature"]), -a, rtol=1e-10)
        np.testing.assert_allclose(thetas[k + 1], 2 * thetas[k], rtol=1e-12)  # reflected away from p = 0
    assert abs(thetas[-1]) > 8 * abs(thetas[1])


def test_max_step_caps_the_parabola_step():
    a = 2.0
    value_fn = lambda p: -0.5 * a * jnp.dot(ravel_pytree(p)[0], U) ** 2
    _, hist = run(online_parabola(LR, max_step=0.05), value_fn, nested(W0), steps=4)
    for _, upd, diag, _ in hist[1:]:
        assert int(diag["well_posed"]) == 1
        np.testing.assert_allclose(abs(float(diag["parabola_step"])), 0.05, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(flat(upd)), 0.05, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_ill_posed_falls_back_to_momentum_sgd_exactly(dtype):
    prob = with_params_dtype(make_problem(seed=3, activation=jnp.tanh), dtype)
    grad_fn = jax.jit(jax.grad(prob.value_fn))
    sgd = optax.sgd(LR, momentum=0.9)
    # First step: zero variance. With an unreachable curvature floor: every step.
    for min_curvature, steps in ((1e-3, 1), (1e30, 8)):
        tx = online_parabola(LR, momentum=0.9, min_curvature=min_curvature)
        update, ref_update = jax.jit(tx.update), jax.jit(sgd.update)
        params, state, ref_state = prob.params, tx.init(prob.params), sgd.init(prob.params)
        for _ in range(steps):  # both fed the same gradients: the same updates, to the bit
            grads = grad_fn(params)
            upd, state = update(grads, state, params)
            ref_upd, ref_state = ref_update(grads, ref_state)
            assert int(collect_diagnostics(state)["well_posed"]) == 0
            for u, r in zip(jax.tree_util.tree_leaves(upd), jax.tree_util.tree_leaves(ref_upd)):
                assert u.dtype == r.dtype == dtype
                np.testing.assert_array_equal(np.asarray(u), np.asarray(r))
            params = optax.apply_updates(params, upd)


def test_zero_gradient_is_a_zero_step():
    _, hist = run(online_parabola(LR), lambda p: 0.0 * jnp.sum(p["w"]["x"]), nested(W0), steps=3)
    for _, upd, diag, _ in hist:
        assert int(diag["well_posed"]) == 0 and np.all(flat(upd) == 0)
        assert all(np.isfinite(float(v)) for v in diag.values())


def reference(value_and_grad, w0, steps, lr, beta, mu, min_curvature, max_step):
    """The update rule written out on flat numpy vectors: the updates it takes."""
    w = np.array(w0, float)
    wbar = gbar = b = None
    var = cov = 0.0
    out = []
    for t in range(steps):
        g = value_and_grad(w)
        wold, gold = (w, g) if t == 0 else (wbar, gbar)
        wbar, gbar = beta * wold + (1 - beta) * w, beta * gold + (1 - beta) * g
        v = gold / np.linalg.norm(gold)
        dw, dg = (w - wold) @ v, (g - gold) @ v
        var, cov = beta * (var + (1 - beta) * dw * dw), beta * (cov + (1 - beta) * dw * dg)
        buf = g if b is None else mu * b + g
        ok = t > 0 and var > 0 and abs(cov / var) >= min_curvature
        if ok:
            lam = cov / var
            p = wbar @ v - gbar @ v / lam
            delta = float(np.clip(-np.sign(lam) * (w @ v - p), -max_step, max_step))
            orth = buf - (buf @ v) * v
            u, b = -lr * orth + delta * v, orth
        else:
            u, b = -lr * buf, buf
        out.append((u, ok))
        w = w + u
    return out


def test_orthogonal_directions_get_momentum_sgd():
    # 2-D: f = ½ (w − c)ᵀ A (w − c) + ¼ w₁⁴, whose gradients turn: v̂ moves every step.
    A = np.array([[3.0, 1.0], [1.0, 0.5]])
    c = np.array([1.0, -2.0])
    value_fn = lambda p: (
        0.5 * (ravel_pytree(p)[0] - c) @ A @ (ravel_pytree(p)[0] - c) + 0.25 * ravel_pytree(p)[0][1] ** 4
    )
    grad_np = lambda w: A @ (w - c) + np.array([0.0, w[1] ** 3])
    params = {"w": {"x": jnp.asarray([2.0]), "y": jnp.asarray([0.5])}}
    beta, mu, floor, cap = 0.8, 0.7, 1e-3, 0.4
    tx = online_parabola(LR, beta=beta, momentum=mu, min_curvature=floor, max_step=cap)
    _, hist = run(tx, value_fn, params, steps=25)
    ref = reference(grad_np, [2.0, 0.5], 25, LR, beta, mu, floor, cap)
    assert sum(ok for _, ok in ref) >= 20
    previous_buffer, previous_state = np.zeros(2), None
    for (w, upd, diag, state), (ref_upd, ok) in zip(hist, ref):
        assert int(diag["well_posed"]) == int(ok)
        np.testing.assert_allclose(flat(upd), ref_upd, rtol=1e-10, atol=1e-13)
        # Closed form of the step's two parts, from the state: momentum SGD orthogonally to v̂ …
        g = grad_np(flat(w))
        v = g / np.linalg.norm(g) if previous_state is None else direction(previous_state)
        buf = mu * previous_buffer + g
        if ok:
            orth = buf - (buf @ v) * v
            np.testing.assert_allclose(flat(upd) - (flat(upd) @ v) * v, -LR * orth, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(flat(state.momentum), orth, rtol=1e-10, atol=1e-14)
            # … and the parabola step along it.
            np.testing.assert_allclose(flat(upd) @ v, float(diag["parabola_step"]), rtol=1e-10, atol=1e-14)
        else:
            np.testing.assert_allclose(flat(upd), -LR * buf, rtol=1e-12)
        previous_buffer, previous_state = flat(state.momentum), state


def test_plain_sgd_orthogonally_with_zero_momentum():
    # momentum = 0 is the paper's rule: w ← w − η (g − ⟨g, v̂⟩ v̂) + Δ v̂.
    prob = make_problem(seed=5, activation=jnp.tanh)
    _, hist = run(online_parabola(LR, momentum=0.0, max_step=None), prob.value_fn, prob.params, steps=6)
    assert sum(int(d["well_posed"]) for _, _, d, _ in hist) >= 3
    for (w, upd, diag, _), (*_, previous_state) in zip(hist[1:], hist):
        g = flat(jax.grad(prob.value_fn)(w))
        v = direction(previous_state)
        if int(diag["well_posed"]):
            expected = -LR * (g - (g @ v) * v) + float(diag["parabola_step"]) * v
            np.testing.assert_allclose(flat(upd), expected, rtol=1e-10, atol=1e-13)


def test_inject_hyperparams_under_jit_and_diagnostics():
    prob = make_problem(seed=2, activation=jnp.tanh)
    kwargs = dict(beta=0.8, momentum=0.5, min_curvature=1e-4, max_step=0.5, step_fraction=0.5)
    tx = optax.inject_hyperparams(online_parabola)(learning_rate=LR, **kwargs)
    final, hist = run(tx, prob.value_fn, prob.params, steps=6)
    ref_final, _ = run(online_parabola(LR, **kwargs), prob.value_fn, prob.params, steps=6)
    np.testing.assert_allclose(flat(final), flat(ref_final), rtol=1e-12)
    diag = hist[-1][2]
    assert set(diag) == DIAGNOSTICS
    assert any(int(d["well_posed"]) for _, _, d, _ in hist)

    # A changed learning rate is traced, not baked in: one jitted function, two values.
    state = tx.init(prob.params)
    grads = jax.grad(prob.value_fn)(prob.params)
    step = jax.jit(lambda s: tx.update(grads, s, prob.params)[0])
    half = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(LR / 2)})
    np.testing.assert_allclose(flat(step(half)), 0.5 * flat(step(state)), rtol=1e-14)


def test_update_needs_params():
    prob = make_problem(seed=0)
    tx = online_parabola(LR)
    with pytest.raises(ValueError, match="online_parabola: update"):
        tx.update(jax.grad(prob.value_fn)(prob.params), tx.init(prob.params))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beta": 1.5}, "online_parabola: beta must lie in [0, 1), got 1.5"),
        ({"beta": -0.1}, "online_parabola: beta must lie in [0, 1), got -0.1"),
        ({"momentum": 1.0}, "online_parabola: momentum must lie in [0, 1), got 1.0"),
        ({"min_curvature": -1.0}, "online_parabola: min_curvature must be >= 0, got -1.0"),
        ({"max_step": 0.0}, "online_parabola: max_step must be > 0 or null, got 0.0"),
        ({"step_fraction": 0.0}, "online_parabola: step_fraction must lie in (0, 1], got 0.0"),
        ({"step_fraction": 1.5}, "online_parabola: step_fraction must lie in (0, 1], got 1.5"),
        ({"learning_rate": -0.1}, "online_parabola: learning_rate must be >= 0, got -0.1"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    kwargs = {"learning_rate": LR, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        online_parabola(**kwargs)
    assert re.fullmatch(r"\w+: (\w+) must (.+), got (.+)", message)


def test_config_builds_and_reports_bad_values():
    from second_order.suite.cli import one_line
    from second_order.suite.experiment import prepare

    rc, tx = prepare(compose_config(["optimizer=online_parabola", "data.dir=/x"]))
    assert rc.optimizer.name == "online_parabola" and callable(tx.update)
    with pytest.raises(Exception) as err:
        prepare(compose_config(["optimizer=online_parabola", "optimizer.beta=1.5", "data.dir=/x"]))
    assert one_line(err.value) == "optimizer.beta = 1.5 is invalid: must lie in [0, 1)"


def test_learning_rate_schedule():
    prob = make_problem(seed=4, activation=jnp.tanh)
    schedule = optax.linear_schedule(LR, 0.0, transition_steps=4)
    final, hist = run(online_parabola(schedule, min_curvature=1e30), prob.value_fn, prob.params, steps=5)
    ref = run(optax.sgd(schedule), prob.value_fn, prob.params, steps=5, extra=False)[0]
    np.testing.assert_allclose(flat(final), flat(ref), rtol=1e-13)
    assert np.all(flat(hist[-1][1]) == 0)  # the schedule reached 0
