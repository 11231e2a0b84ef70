"""Each optimizer's update against its dense closed form, under jit, pytree params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from problems import dense_ggn_ref, dense_hessian_ref, flat_grad, make_problem
from second_order.optim import collect_diagnostics, gauss_newton, hessian_free, newton

LR = 0.5


def jitted_update(tx, prob):
    """One update under jit, every optimizer handed the same extra arguments."""
    state = tx.init(prob.params)
    grads = jax.grad(prob.value_fn)(prob.params)

    @jax.jit
    def step(grads, state, params):
        return tx.update(
            grads, state, params,
            value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn,
        )

    updates, state = step(grads, state, prob.params)
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(prob.params)
    for u, p in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(prob.params)):
        assert u.dtype == p.dtype and u.shape == p.shape
    return np.asarray(ravel_pytree(updates)[0]), collect_diagnostics(state), state


def test_newton_damped_positive_definite():
    prob = make_problem(seed=0, activation=jnp.tanh)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    lam = 1.0 - min(0.0, np.linalg.eigvalsh(h).min())  # makes H + λI PD
    upd, diag, state = jitted_update(newton(LR, damping=lam), prob)
    np.testing.assert_allclose(upd, -LR * np.linalg.solve(h + lam * np.eye(len(g)), g), rtol=1e-9)
    assert int(diag["solve_path"]) == 0 and int(state.count) == 1
    np.testing.assert_allclose(diag["grad_norm"], np.linalg.norm(g), rtol=1e-12)


def test_newton_undamped_singular_indefinite_is_pseudo_inverse():
    prob = make_problem(seed=1, activation=jax.nn.relu, batch=4, hidden=5)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    eig = np.linalg.eigvalsh(h)
    assert eig.min() < -1e-6, "test premise: H is indefinite"
    assert np.linalg.matrix_rank(h) < len(g), "test premise: H is singular"
    upd, diag, _ = jitted_update(newton(LR), prob)
    np.testing.assert_allclose(upd, -LR * np.linalg.pinv(h) @ g, rtol=1e-7, atol=1e-9)
    assert int(diag["solve_path"]) == 1
    assert int(diag["rank"]) == np.linalg.matrix_rank(h)
    np.testing.assert_allclose(diag["min_eigenvalue"], eig.min(), rtol=1e-8)


def test_hessian_free_matches_dense_solve():
    prob = make_problem(seed=2, activation=jnp.tanh)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    lam = 2.0 - min(0.0, np.linalg.eigvalsh(h).min())
    upd, diag, _ = jitted_update(hessian_free(LR, damping=lam, tol=1e-12), prob)
    np.testing.assert_allclose(upd, -LR * np.linalg.solve(h + lam * np.eye(len(g)), g), rtol=1e-9)
    assert 1 <= int(diag["cg_iterations"]) <= 10 * len(g)
    assert float(diag["cg_residual"]) <= 1e-12
    assert float(diag["cg_min_curvature"]) >= lam - 1e-9 + min(0.0, np.linalg.eigvalsh(h).min())


def test_gauss_newton_matches_dense_solve():
    prob = make_problem(seed=3, activation=jax.nn.relu)
    gmat, g = dense_ggn_ref(prob), flat_grad(prob)
    upd, diag, _ = jitted_update(gauss_newton(LR, damping=0.1, tol=1e-12), prob)
    np.testing.assert_allclose(upd, -LR * np.linalg.solve(gmat + 0.1 * np.eye(len(g)), g), rtol=1e-8)
    assert float(diag["cg_residual"]) <= 1e-12
    assert float(diag["cg_min_curvature"]) >= 0.1 - 1e-9  # G + λI ⪰ λI


def test_hessian_free_honours_maxiter():
    prob = make_problem(seed=4)
    _, diag, _ = jitted_update(hessian_free(LR, damping=5.0, maxiter=2, tol=1e-12), prob)
    assert int(diag["cg_iterations"]) == 2


@pytest.mark.parametrize("name", ["newton", "hessian_free", "gauss_newton"])
def test_float32_parameters_and_solve(name):
    """float32 end to end: same closed form with a looser tolerance."""
    prob = make_problem(seed=5, activation=jnp.tanh, dtype=jnp.float32)
    p64 = make_problem(seed=5, activation=jnp.tanh, dtype=jnp.float64)
    h, gmat, g = dense_hessian_ref(p64), dense_ggn_ref(p64), flat_grad(p64)
    lam = 3.0 - min(0.0, np.linalg.eigvalsh(h).min())
    tx = {
        "newton": newton(LR, lam, solve_dtype=jnp.float32),
        "hessian_free": hessian_free(LR, lam, tol=1e-6, solve_dtype=jnp.float32),
        "gauss_newton": gauss_newton(LR, lam, tol=1e-6, solve_dtype=jnp.float32),
    }[name]
    curvature = gmat if name == "gauss_newton" else h
    upd, _, _ = jitted_update(tx, prob)
    assert upd.dtype == np.float32
    np.testing.assert_allclose(upd, -LR * np.linalg.solve(curvature + lam * np.eye(len(g)), g), rtol=2e-3, atol=1e-5)


def test_default_solve_dtype_is_float64_with_x64_on_float32_params():
    prob = make_problem(seed=6, dtype=jnp.float32)
    _, diag, _ = jitted_update(hessian_free(LR, 1.0), prob)
    assert diag["grad_norm"].dtype == jnp.float64


def test_composes_with_optax_chain_and_schedule():
    prob = make_problem(seed=7)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    lam = 1.0 - min(0.0, np.linalg.eigvalsh(h).min())
    schedule = optax.constant_schedule(LR)
    tx = optax.chain(optax.identity(), newton(schedule, lam))
    upd, diag, _ = jitted_update(tx, prob)
    np.testing.assert_allclose(upd, -LR * np.linalg.solve(h + lam * np.eye(len(g)), g), rtol=1e-9)
    assert "solve_path" in diag


def test_missing_extra_argument_is_a_clear_error():
    prob = make_problem()
    tx = gauss_newton(LR, 1.0)
    with pytest.raises(TypeError, match="predict_fn"):
        tx.update(prob.params, tx.init(prob.params), prob.params, value_fn=prob.value_fn)


@pytest.mark.parametrize(
    "make", [lambda: newton(-1.0), lambda: newton(0.5, -2.0), lambda: hessian_free(0.5, 1.0, tol=1.5),
             lambda: gauss_newton(0.5, -1.0), lambda: hessian_free(0.5, 1.0, maxiter=0)]
)
def test_bad_hyperparameters_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_sgd_ignores_extra_arguments_when_wrapped():
    """optax.sgd is the SGD baseline; with_extra_args_support lets a trainer call it the same way."""
    prob = make_problem()
    tx = optax.with_extra_args_support(optax.sgd(0.1))
    grads = jax.grad(prob.value_fn)(prob.params)
    upd, _ = tx.update(grads, tx.init(prob.params), prob.params, value_fn=prob.value_fn)
    np.testing.assert_allclose(ravel_pytree(upd)[0], -0.1 * ravel_pytree(grads)[0])


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_newton_low_rank_path_equals_pseudo_inverse(damping):
    """A batch of 2 makes H (n = 43) rank 14: the low-rank path must give pinv(H + λI) g."""
    prob = make_problem(seed=1, activation=jax.nn.relu, batch=2, hidden=5)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    assert np.linalg.matrix_rank(h) < 30 < len(g)
    upd, diag, _ = jitted_update(newton(LR, damping, max_rank=30), prob)
    expected = -LR * np.linalg.pinv(h + damping * np.eye(len(g))) @ g
    np.testing.assert_allclose(upd, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    assert int(diag["solve_path"]) == 2
    assert int(diag["rank"]) == np.linalg.matrix_rank(h)
    assert float(diag["range_residual"]) < 1e-12


def test_newton_low_rank_falls_back_to_dense_when_rank_is_not_low():
    prob = make_problem(seed=1, activation=jax.nn.relu, batch=2, hidden=5)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    upd, diag, _ = jitted_update(newton(LR, 0.0, max_rank=8), prob)  # rank 14 > 8
    assert int(diag["solve_path"]) == 1
    assert float(diag["range_residual"]) > 1e-6
    np.testing.assert_allclose(upd, -LR * np.linalg.pinv(h) @ g, rtol=1e-7, atol=1e-9 * np.abs(upd).max())
