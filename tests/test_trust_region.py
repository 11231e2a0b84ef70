"""trust_region: steps against dense closed forms, the ρ / radius logic, hyperparameter checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import dense_ggn_ref, dense_hessian_ref, flat_grad, make_problem
from test_krylov import trs_reference

from second_order.optim import collect_diagnostics
from second_order.optim.trust_region import trust_region

KEYS = {
    "radius",
    "rho",
    "accepted",
    "boundary",
    "negative_curvature",
    "inner_iterations",
    "inner_residual",
    "predicted_reduction",
    "actual_reduction",
    "grad_norm",
    "step_norm",
}

PARAMS = {"a": {"x": jnp.array([0.3, -1.0, 2.0]), "y": jnp.array([[0.5, 0.1], [-0.2, 0.0]])}, "b": jnp.array(0.7)}
N = 8


def quadratic(b: np.ndarray, c: np.ndarray, quartic: float = 0.0):
    """value_fn(w) = cᵀu + ½ uᵀBu + quartic·‖u‖⁴ with u = w − w₀ (w₀ = PARAMS), on nested-dict params."""
    w0 = ravel_pytree(PARAMS)[0]

    def value_fn(params):
        u = ravel_pytree(params)[0] - w0
        return c @ u + 0.5 * u @ (b @ u) + quartic * (u @ u) ** 2

    return value_fn


def random_matrix(seed: int, spd: bool) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(N, N))
    return a @ a.T + np.eye(N) if spd else (a + a.T) / 2


def run(tx, value_fn=None, params=PARAMS, state=None, prob=None, steps=1):
    """``steps`` jitted updates at fixed params; returns (flat update, diagnostics, state) of the last."""
    if prob is not None:
        value_fn, params = prob.value_fn, prob.params
    fns = {"value_fn": value_fn}
    if prob is not None:
        fns.update(predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn)
    state = tx.init(params) if state is None else state
    grads = jax.grad(value_fn)(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **fns))
    for _ in range(steps):
        updates, new_state = step(grads, state, params)
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
        for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
            assert a.dtype == b.dtype and a.shape == b.shape  # a lax.scan carry
        state = new_state
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)
    return np.asarray(ravel_pytree(updates)[0]), collect_diagnostics(state), state


@pytest.mark.parametrize("solver", ["steihaug", "gltr"])
def test_exact_quadratic_boundary_step_has_rho_one_and_doubles_radius(solver):
    b, c = random_matrix(0, spd=True), np.random.default_rng(1).normal(size=N)
    tx = trust_region(0.1, solver=solver, max_radius=0.3, krylov_dim=N)
    upd, diag, state = run(tx, quadratic(b, c))
    assert set(diag) == KEYS
    np.testing.assert_allclose(float(diag["rho"]), 1.0, rtol=1e-10)
    assert int(diag["accepted"]) == 1 and int(diag["boundary"]) == 1
    np.testing.assert_allclose(np.linalg.norm(upd), 0.1, rtol=1e-12)
    assert float(diag["radius"]) == 0.1 and float(state.radius) == pytest.approx(0.2)
    np.testing.assert_allclose(float(diag["step_norm"]), 0.1, rtol=1e-12)
    np.testing.assert_allclose(float(diag["grad_norm"]), np.linalg.norm(c), rtol=1e-12)
    np.testing.assert_allclose(float(diag["predicted_reduction"]), float(diag["actual_reduction"]), rtol=1e-10)
    _, diag, state = run(tx, quadratic(b, c), state=state, steps=2)  # 0.2 → 0.4 capped at 0.3 → 0.3
    assert float(diag["radius"]) == pytest.approx(0.3) and float(state.radius) == pytest.approx(0.3)


@pytest.mark.parametrize("solver", ["steihaug", "gltr"])
def test_interior_step_is_newton_step_and_keeps_radius(solver):
    b, c = random_matrix(2, spd=True), np.random.default_rng(3).normal(size=N)
    tx = trust_region(50.0, solver=solver, max_radius=100.0, krylov_dim=N, tol=1e-12)
    upd, diag, state = run(tx, quadratic(b, c))
    np.testing.assert_allclose(upd, np.linalg.solve(b, -c), rtol=1e-9)
    assert int(diag["boundary"]) == 0 and int(diag["accepted"]) == 1 and int(diag["negative_curvature"]) == 0
    assert float(state.radius) == 50.0  # ρ = 1 > ¾ but inside: Δ kept
    assert float(diag["inner_residual"]) < 1e-9


@pytest.mark.parametrize("radius", [0.2, 1.5, 40.0])
def test_gltr_full_krylov_indefinite_equals_exact_minimiser(radius):
    b, c = random_matrix(4, spd=False), np.random.default_rng(5).normal(size=N)
    assert np.linalg.eigvalsh(b).min() < 0
    tx = trust_region(radius, solver="gltr", max_radius=100.0, krylov_dim=50)  # capped at n = 8
    upd, diag, _ = run(tx, quadratic(b, c))
    x_ref, _ = trs_reference(b, c, radius)
    np.testing.assert_allclose(upd, x_ref, rtol=1e-8, atol=1e-12)
    assert int(diag["boundary"]) == 1 and int(diag["negative_curvature"]) == 1
    assert int(diag["inner_iterations"]) == N
    np.testing.assert_allclose(float(diag["rho"]), 1.0, rtol=1e-9)


def test_steihaug_indefinite_stops_on_boundary_with_negative_curvature():
    b = np.diag([-1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    c = np.ones(N)
    tx = trust_region(5.0, solver="steihaug", max_radius=10.0)
    upd, diag, _ = run(tx, quadratic(b, c))
    assert int(diag["negative_curvature"]) == 1 and int(diag["boundary"]) == 1
    np.testing.assert_allclose(np.linalg.norm(upd), 5.0, rtol=1e-12)
    assert c @ upd + 0.5 * upd @ b @ upd < 0


@pytest.mark.parametrize("solver", ["steihaug", "gltr"])
def test_overshooting_step_is_rejected_and_radius_quartered(solver):
    """A quartic term invisible to the quadratic model at w₀: the boundary step increases the loss."""
    b, c = random_matrix(6, spd=True), np.random.default_rng(7).normal(size=N)
    tx = trust_region(2.0, solver=solver, eta=0.1, krylov_dim=N)
    upd, diag, state = run(tx, quadratic(b, c, quartic=100.0))
    assert np.all(upd == 0)
    assert int(diag["accepted"]) == 0 and float(diag["rho"]) < 0
    assert float(diag["actual_reduction"]) < 0 < float(diag["predicted_reduction"])
    assert float(diag["radius"]) == 2.0 and float(state.radius) == 0.5
    assert float(diag["step_norm"]) > 0


def test_rho_thresholds():
    """¼ ≤ ρ ≤ ¾: taken, Δ kept; eta < ρ < ¼: taken, Δ quartered; ρ ≤ eta: rejected, Δ quartered."""
    b, c = np.eye(N), np.ones(N) / np.sqrt(N)
    radius = 0.5
    # Steihaug's step is u = −Δc (‖c‖ = 1, B = I): model −Δ + ½Δ², the loss adds qΔ⁴,
    # so ρ = 1 − qΔ⁴ / (Δ − ½Δ²) = 1 − q/6 at Δ = ½.
    for rho, accepted, new_radius in [(0.5, 1, radius), (0.22, 1, radius / 4), (0.1, 0, radius / 4)]:
        tx = trust_region(radius, max_radius=10.0, eta=0.2)
        upd, diag, state = run(tx, quadratic(b, c, quartic=6.0 * (1.0 - rho)))
        np.testing.assert_allclose(float(diag["rho"]), rho, rtol=1e-12)
        assert int(diag["accepted"]) == accepted and float(state.radius) == new_radius
        assert np.all(upd == 0) if not accepted else np.linalg.norm(upd) == pytest.approx(radius)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_network_gltr_step_is_exact_minimiser_of_the_model(curvature):
    """A small radius makes ρ ≈ 1 (step accepted); the step is the dense TR minimiser for H or G."""
    prob = make_problem(seed=0, activation=jnp.tanh)
    mat = dense_hessian_ref(prob) if curvature == "hessian" else dense_ggn_ref(prob)
    g = flat_grad(prob)
    radius = 0.05
    tx = trust_region(radius, solver="gltr", curvature=curvature, krylov_dim=100)
    upd, diag, _ = run(tx, prob=prob)
    assert int(diag["accepted"]) == 1 and abs(float(diag["rho"]) - 1) < 0.1
    x_ref, _ = trs_reference(mat, g, radius)
    np.testing.assert_allclose(upd, x_ref, rtol=1e-8, atol=1e-12)
    assert 1 <= int(diag["inner_iterations"]) <= len(g)  # the Krylov space may be invariant early
    if curvature == "gauss_newton":
        assert int(diag["negative_curvature"]) == 0  # G ⪰ 0


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_network_steihaug_small_radius_is_scaled_gradient(curvature):
    prob = make_problem(seed=1, activation=jnp.tanh)
    g = flat_grad(prob)
    tx = trust_region(1e-3, curvature=curvature)
    upd, diag, _ = run(tx, prob=prob)
    np.testing.assert_allclose(upd, -1e-3 * g / np.linalg.norm(g), rtol=1e-10)
    assert int(diag["inner_iterations"]) == 1 and int(diag["accepted"]) == 1


def test_float32_parameters():
    prob = make_problem(seed=2, activation=jnp.tanh, dtype=jnp.float32)
    upd, diag, state = run(trust_region(0.1, solver="gltr"), prob=prob)
    assert upd.dtype == np.float32 and diag["grad_norm"].dtype == np.float64 and state.radius.dtype == np.float64


def test_inject_hyperparams_traced_radius_eta_and_static_shapes():
    b, c = random_matrix(8, spd=False), np.random.default_rng(9).normal(size=N)
    value_fn = quadratic(b, c)
    direct, diag_direct, _ = run(trust_region(0.7, solver="gltr", eta=0.05, krylov_dim=N), value_fn)
    injected = optax.inject_hyperparams(trust_region, static_args=("krylov_dim", "maxiter"))(
        initial_radius=0.7, solver="gltr", eta=0.05, krylov_dim=N
    )
    upd, diag, _ = run(injected, value_fn)
    np.testing.assert_allclose(upd, direct, rtol=1e-12)
    assert float(diag["radius"]) == float(diag_direct["radius"])
    with pytest.raises(TypeError, match="static_args"):
        run(optax.inject_hyperparams(trust_region)(initial_radius=0.7, solver="gltr"), value_fn)


def test_missing_value_fn_is_a_clear_error():
    tx = trust_region(1.0)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    tx = trust_region(1.0, curvature="gauss_newton")
    with pytest.raises(TypeError, match="predict_fn"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS, value_fn=lambda p: 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial_radius": -1.0}, "trust_region: initial_radius must be > 0, got -1.0"),
        ({"initial_radius": 1.0, "max_radius": 0.0}, "trust_region: max_radius must be > 0, got 0.0"),
        (
            {"initial_radius": 5.0, "max_radius": 2.0},
            "trust_region: initial_radius must be <= max_radius = 2.0, got 5.0",
        ),
        ({"initial_radius": 1.0, "eta": 0.5}, "trust_region: eta must lie in [0, 0.25), got 0.5"),
        ({"initial_radius": 1.0, "eta": -0.1}, "trust_region: eta must lie in [0, 0.25), got -0.1"),
        ({"initial_radius": 1.0, "krylov_dim": 0}, "trust_region: krylov_dim must be >= 1, got 0"),
        ({"initial_radius": 1.0, "maxiter": 0}, "trust_region: maxiter must be >= 1, got 0"),
        ({"initial_radius": 1.0, "tol": 1.5}, "trust_region: tol must lie in (0, 1), got 1.5"),
        ({"initial_radius": 1.0, "solver": "foo"}, "trust_region: solver must be one of 'steihaug', 'gltr', got 'foo'"),
        (
            {"initial_radius": 1.0, "curvature": "fisher"},
            "trust_region: curvature must be one of 'hessian', 'gauss_newton', got 'fisher'",
        ),
    ],
)
def test_bad_hyperparameters_rejected(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        trust_region(**kwargs)


@pytest.mark.parametrize("solver", ["steihaug", "gltr"])
def test_zero_gradient_keeps_the_radius_and_reports_rho_one(solver):
    """g = 0 at a saddle: s = 0 and m(s) = 0 used to give ρ = 0/0 = NaN and Δ quartered every step."""
    value_fn = quadratic(random_matrix(5, spd=False), np.zeros(N))  # indefinite, stationary at PARAMS
    tx = trust_region(0.8, solver=solver)
    upd, diag, state = run(tx, value_fn, steps=4)
    np.testing.assert_array_equal(upd, np.zeros(N))
    assert float(state.radius) == 0.8 and float(diag["radius"]) == 0.8
    assert float(diag["rho"]) == 1.0 and int(diag["accepted"]) == 1 and int(diag["boundary"]) == 0
    assert float(diag["predicted_reduction"]) == 0.0 and float(diag["actual_reduction"]) == 0.0
    assert float(diag["grad_norm"]) == 0.0 and float(diag["step_norm"]) == 0.0
