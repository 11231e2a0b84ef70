"""saddle_free_newton against −η (|H| + λI)⁻¹ g, and its escape from a saddle where Newton is attracted."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import dense_hessian_ref, flat_grad, make_problem

from second_order.optim import collect_diagnostics, newton
from second_order.optim.saddle_free import saddle_free_newton

KEYS = {"min_eigenvalue", "max_eigenvalue", "negative_ritz", "krylov_size", "grad_norm", "step_norm"}
LR = 0.5


def abs_matrix_solve(h: np.ndarray, g: np.ndarray, damping: float) -> np.ndarray:
    """(|H| + λI)⁺ g with |H| = Q|Λ|Qᵀ (numpy eigh; numpy's pseudo-inverse cut-off for λ = 0).

    A softmax network's Hessian is singular (shifting all logits changes nothing) with
    g orthogonal to the null space, which the Krylov space never reaches.
    """
    w, q = np.linalg.eigh(h)
    s = np.abs(w) + damping
    keep = s > 10 * len(g) * np.finfo(float).eps * s.max()
    return q @ np.where(keep, (q.T @ g) / np.where(keep, s, 1.0), 0.0)


def run(tx, value_fn, params):
    state = tx.init(params)
    assert set(collect_diagnostics(state)) == KEYS
    grads = jax.grad(value_fn)(params)
    updates, new_state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=value_fn))(grads, state, params)
    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
        assert a.dtype == b.dtype and a.shape == b.shape  # a lax.scan carry
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)
    for u, p in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(params)):
        assert u.dtype == p.dtype and u.shape == p.shape
    return np.asarray(ravel_pytree(updates)[0]), collect_diagnostics(new_state)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_full_krylov_equals_dense_abs_hessian_step(damping):
    prob = make_problem(seed=2, activation=jnp.tanh)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    eig = np.linalg.eigvalsh(h)
    assert eig.min() < -1e-3, "test premise: H is indefinite"
    upd, diag = run(saddle_free_newton(LR, damping, krylov_dim=100), prob.value_fn, prob.params)
    expected = -LR * abs_matrix_solve(h, g, damping)
    np.testing.assert_allclose(upd, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    size = int(diag["krylov_size"])
    assert 1 <= size <= len(g)
    np.testing.assert_allclose(float(diag["min_eigenvalue"]), eig.min(), rtol=1e-8)
    np.testing.assert_allclose(float(diag["max_eigenvalue"]), eig.max(), rtol=1e-8)
    assert int(diag["negative_ritz"]) >= 1
    np.testing.assert_allclose(float(diag["grad_norm"]), np.linalg.norm(g), rtol=1e-12)
    np.testing.assert_allclose(float(diag["step_norm"]), np.linalg.norm(expected) / LR, rtol=1e-7)


def test_small_krylov_space_equals_projected_abs_hessian_step():
    """k < n: d = V (|T| + λI)⁻¹ Vᵀ g for any orthonormal basis of K_k(H, g) (numpy QR of [g, Hg, …])."""
    prob = make_problem(seed=3, activation=jnp.tanh)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    k, damping = 4, 0.2
    krylov = np.stack([np.linalg.matrix_power(h, i) @ g for i in range(k)], axis=1)
    v, _ = np.linalg.qr(krylov)
    expected = -LR * v @ abs_matrix_solve(v.T @ h @ v, v.T @ g, damping)
    upd, diag = run(saddle_free_newton(LR, damping, krylov_dim=k), prob.value_fn, prob.params)
    np.testing.assert_allclose(upd, expected, rtol=1e-7, atol=1e-10)
    assert int(diag["krylov_size"]) == k


SADDLE = {"a": {"x": jnp.array(0.02)}, "b": jnp.array(0.05)}  # near the saddle


def saddle_value(params):
    """f = x² − ½ y²: a saddle at the origin."""
    return params["a"]["x"] ** 2 - 0.5 * params["b"] ** 2


def test_moves_away_from_saddle_where_newton_jumps_onto_it():
    """H = diag(2, −1): Newton's −H⁻¹g lands on the saddle; −(|H|)⁻¹g keeps descending in y."""
    w0 = np.array([0.02, 0.05])
    upd_sfn, diag = run(saddle_free_newton(1.0, 0.0, krylov_dim=2), saddle_value, SADDLE)
    upd_newton, _ = run_newton()
    np.testing.assert_allclose(w0 + upd_newton, [0.0, 0.0], atol=1e-15)  # Newton: onto the saddle
    np.testing.assert_allclose(w0 + upd_sfn, [0.0, 0.1], atol=1e-15)  # saddle-free: x solved, |y| doubled
    assert np.linalg.norm(w0 + upd_sfn) > np.linalg.norm(w0)  # away from the saddle
    new = jax.tree_util.tree_map(jnp.add, SADDLE, ravel_pytree(SADDLE)[1](jnp.asarray(upd_sfn)))
    assert float(saddle_value(new)) < float(saddle_value(SADDLE))
    assert float(diag["min_eigenvalue"]) == pytest.approx(-1.0) and int(diag["negative_ritz"]) == 1


def run_newton():
    tx = newton(1.0, 0.0, max_rank=None)
    state = tx.init(SADDLE)
    grads = jax.grad(saddle_value)(SADDLE)
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=saddle_value))(grads, state, SADDLE)
    return np.asarray(ravel_pytree(updates)[0]), state


def test_zero_gradient_gives_zero_step_without_nan():
    params = {"a": {"x": jnp.array(0.0)}, "b": jnp.array(0.0)}
    upd, diag = run(saddle_free_newton(LR, 0.0, krylov_dim=5), saddle_value, params)
    assert np.all(upd == 0)
    assert int(diag["krylov_size"]) == 0 and float(diag["step_norm"]) == 0.0


def test_inject_hyperparams_traced_learning_rate_and_damping():
    prob = make_problem(seed=4, activation=jnp.tanh)
    direct, _ = run(saddle_free_newton(0.5, 1.0, krylov_dim=6), prob.value_fn, prob.params)
    injected = optax.inject_hyperparams(saddle_free_newton, static_args=("krylov_dim",))(
        learning_rate=0.5, damping=1.0, krylov_dim=6
    )
    upd, _ = run(injected, prob.value_fn, prob.params)
    np.testing.assert_allclose(upd, direct, rtol=1e-12)
    with pytest.raises(TypeError, match="static_args"):
        run(optax.inject_hyperparams(saddle_free_newton)(learning_rate=0.5, damping=1.0), prob.value_fn, prob.params)


def test_float32_parameters_and_schedule():
    prob = make_problem(seed=5, activation=jnp.tanh, dtype=jnp.float32)
    tx = saddle_free_newton(optax.constant_schedule(LR), 1.0, krylov_dim=5)
    upd, diag = run(tx, prob.value_fn, prob.params)
    assert upd.dtype == np.float32 and diag["grad_norm"].dtype == np.float64


def test_missing_value_fn_is_a_clear_error():
    tx = saddle_free_newton(LR, 1.0)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(SADDLE, tx.init(SADDLE), SADDLE)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((0.5, 1.0), {"krylov_dim": 0}, "saddle_free_newton: krylov_dim must be >= 1, got 0"),
        ((-0.5, 1.0), {}, "saddle_free_newton: learning_rate must be >= 0, got -0.5"),
        ((0.5, -1.0), {}, "saddle_free_newton: damping must be >= 0, got -1.0"),
    ],
)
def test_bad_hyperparameters_rejected(args, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        saddle_free_newton(*args, **kwargs)


@pytest.mark.parametrize("smallest, counted", [(-1e-15, 0), (-0.5, 1)])
def test_negative_ritz_counts_only_curvature_negative_beyond_rounding(smallest, counted):
    """H = diag(1, 2, 3, smallest): a Ritz value of rounding size below 0 is not negative curvature."""
    curvature = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([3.0, smallest])}}
    at = {"a": jnp.array([1.0, 1.0]), "b": {"c": jnp.array([1.0, 0.1 / abs(smallest)])}}  # g = (1, 2, 3, −0.1)

    def value_fn(p):
        return 0.5 * sum(
            jnp.sum(h * w**2) for h, w in zip(jax.tree_util.tree_leaves(curvature), jax.tree_util.tree_leaves(p))
        )

    _, diag = run(saddle_free_newton(LR, 0.1, krylov_dim=4), value_fn, at)
    assert int(diag["krylov_size"]) == 4
    np.testing.assert_allclose(float(diag["min_eigenvalue"]), smallest, atol=1e-14)
    assert int(diag["negative_ritz"]) == counted
