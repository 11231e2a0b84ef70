"""Conjugate gradient and the dense damped solve against numpy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from second_order.optim import collect_diagnostics, hessian_free
from second_order.solvers import cg, damped_solve


def spd_matrix(n: int, eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return (q * eigenvalues) @ q.T


def test_cg_solves_spd_system_on_pytrees():
    n = 30
    a = spd_matrix(n, np.linspace(1.0, 50.0, n))
    b = np.random.default_rng(1).normal(size=n)

    # Split the unknowns into a nested dict to exercise pytree arithmetic.
    def matvec(v):
        flat = jnp.concatenate([v["x"], v["y"]["z"]])
        out = jnp.asarray(a) @ flat
        return {"x": out[:10], "y": {"z": out[10:]}}

    rhs = {"x": jnp.asarray(b[:10]), "y": {"z": jnp.asarray(b[10:])}}
    res = jax.jit(lambda r: cg(matvec, r, tol=1e-12))(rhs)
    x = np.concatenate([res.x["x"], res.x["y"]["z"]])
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-9)
    assert res.residual_norm <= 1e-12 * np.linalg.norm(b) * 1.0001
    np.testing.assert_allclose(res.b_norm, np.linalg.norm(b))
    np.testing.assert_allclose(res.residual_norm, np.linalg.norm(b - a @ x), atol=1e-10)


def test_cg_honours_maxiter_and_reports_iterations():
    n = 50
    a = jnp.asarray(spd_matrix(n, np.logspace(0, 4, n)))
    b = jnp.ones(n)
    for k in (1, 3, 7):
        res = jax.jit(lambda b, k=k: cg(lambda v: a @ v, b, tol=1e-14, maxiter=k))(b)
        assert int(res.iterations) == k
        assert float(res.residual_norm) > 1e-14 * float(res.b_norm)  # did not converge: stopped by maxiter


def test_cg_stops_early_at_tol():
    """A matrix with 4 distinct eigenvalues: exact CG converges in 4 iterations."""
    n = 40
    a = jnp.asarray(spd_matrix(n, np.repeat([1.0, 2.0, 5.0, 10.0], 10)))
    b = jnp.asarray(np.random.default_rng(2).normal(size=n))
    res = cg(lambda v: a @ v, b, tol=1e-5)
    assert 1 <= int(res.iterations) <= 5 < n
    assert float(res.residual_norm) <= 1e-5 * float(res.b_norm)
    # Looser tolerance takes no more iterations than a tight one.
    loose = cg(lambda v: a @ v, b, tol=1e-1)
    assert int(loose.iterations) <= int(res.iterations)


def test_cg_matches_jax_scipy_cg_defaults():
    n = 25
    a = jnp.asarray(spd_matrix(n, np.logspace(0, 3, n), seed=4))
    b = jnp.asarray(np.random.default_rng(5).normal(size=n))
    ours = cg(lambda v: a @ v, b)
    ref, _ = jax.scipy.sparse.linalg.cg(lambda v: a @ v, b)
    np.testing.assert_allclose(ours.x, ref, rtol=1e-12, atol=1e-14)


def test_cg_zero_rhs_returns_zero_without_iterating():
    res = cg(lambda v: 2.0 * v, jnp.zeros(5))
    assert int(res.iterations) == 0
    np.testing.assert_array_equal(res.x, 0.0)


def test_damped_solve_uses_cholesky_when_positive_definite():
    n = 20
    h = spd_matrix(n, np.linspace(-3.0, 10.0, n), seed=6)  # indefinite H
    g = np.random.default_rng(7).normal(size=n)
    res = jax.jit(damped_solve)(jnp.asarray(h), jnp.asarray(g), 5.0)  # H + 5I is PD
    assert bool(res.used_cholesky)
    assert np.isposinf(float(res.min_eigenvalue))  # not computed: +inf, never NaN (jax_debug_nans)
    np.testing.assert_allclose(res.x, np.linalg.solve(h + 5.0 * np.eye(n), g), rtol=1e-10)


def test_damped_solve_falls_back_to_pseudo_inverse_when_singular_indefinite():
    n = 20
    eig = np.concatenate([np.linspace(-2.0, 8.0, 12), np.zeros(8)])  # rank 12 (one eigenvalue is 0 too)
    eig[eig == 0.0] = 0.0
    h = spd_matrix(n, eig, seed=8)
    g = np.random.default_rng(9).normal(size=n)
    res = jax.jit(damped_solve)(jnp.asarray(h), jnp.asarray(g), 0.0)
    assert not bool(res.used_cholesky)
    np.testing.assert_allclose(res.x, np.linalg.pinv(h) @ g, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.min_eigenvalue, np.linalg.eigvalsh(h).min(), rtol=1e-10)
    assert int(res.rank) == np.linalg.matrix_rank(h)


def test_damped_solve_singular_psd_does_not_take_cholesky():
    """A PSD but singular matrix may factor in floating point; pinv semantics must still hold."""
    n = 15
    h = spd_matrix(n, np.concatenate([np.linspace(1.0, 4.0, 10), np.zeros(5)]), seed=10)
    g = np.random.default_rng(11).normal(size=n)
    res = damped_solve(jnp.asarray(h), jnp.asarray(g), 0.0)
    np.testing.assert_allclose(res.x, np.linalg.pinv(h) @ g, rtol=1e-7, atol=1e-9)


def test_low_rank_solve_matches_pinv_of_explicit_low_rank_matrix():
    from second_order.solvers import low_rank_damped_solve

    n, r = 60, 9
    rng = np.random.default_rng(12)
    u = np.linalg.qr(rng.normal(size=(n, r)))[0]
    h = (u * (np.linspace(-3.0, 5.0, r) + 0.5)) @ u.T  # symmetric, indefinite, rank 9
    g = rng.normal(size=n)
    key = jax.random.PRNGKey(0)
    for lam in (0.0, 2.0):
        res = jax.jit(lambda g, lam: low_rank_damped_solve(lambda v: jnp.asarray(h) @ v, g, lam, 16, key))(g, lam)
        assert bool(res.verified) and int(res.rank) == r
        np.testing.assert_allclose(res.x, np.linalg.pinv(h + lam * np.eye(n)) @ g, rtol=1e-9, atol=1e-11)
    full = spd_matrix(n, np.linspace(1.0, 2.0, n))
    assert not bool(low_rank_damped_solve(lambda v: jnp.asarray(full) @ v, jnp.asarray(g), 0.0, 16, key).verified)


def test_damped_solve_with_non_finite_hessian_does_not_raise():
    h = jnp.full((6, 6), jnp.nan)
    res = jax.jit(damped_solve)(h, jnp.ones(6), 1.0)
    assert not bool(res.used_cholesky)
    assert not np.all(np.isfinite(np.asarray(res.x)))


def test_damped_solve_unit_pivots_ill_conditioned_takes_eigen_path():
    """A = L Lᵀ, L unit lower-triangular with −1 below the diagonal: unit pivots, λ_min ≈ 4⁻ⁿ.

    The pivots say nothing about λ_min; pinv truncates it, so Cholesky (which would
    return entries ~ 2ⁿ) must not be taken.
    """
    n = 40
    low = np.eye(n) - np.tril(np.ones((n, n)), -1)
    a = low @ low.T
    assert np.all(np.diag(np.linalg.cholesky(a)) ** 2 > 1 - 1e-12), "test premise: unit pivots"
    assert np.linalg.matrix_rank(a) < n, "test premise: pinv truncates λ_min"
    g = np.random.default_rng(13).normal(size=n)
    res = jax.jit(damped_solve)(jnp.asarray(a), jnp.asarray(g), 0.0)
    assert not bool(res.used_cholesky)
    assert int(res.rank) == np.linalg.matrix_rank(a)
    expected = np.linalg.pinv(a) @ g
    np.testing.assert_allclose(res.x, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_damped_solve_low_rank_plus_damping_takes_cholesky(dtype):
    """The damped-Newton case (H of low rank, λ = 32): provably no truncation, Cholesky path."""
    n, r = 200, 30
    rng = np.random.default_rng(14)
    u = np.linalg.qr(rng.normal(size=(n, r)))[0]
    h = (u * np.linspace(-10.0, 200.0, r)) @ u.T
    g = rng.normal(size=n)
    res = jax.jit(damped_solve)(jnp.asarray(h, dtype), jnp.asarray(g, dtype), 32.0)
    assert bool(res.used_cholesky)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-4
    np.testing.assert_allclose(res.x, np.linalg.solve(h + 32.0 * np.eye(n), g), rtol=rtol, atol=rtol)


def test_cg_reports_negative_curvature_and_does_not_stop_on_it():
    n = 12
    a = spd_matrix(n, np.linspace(-2.0, 5.0, n), seed=15)  # indefinite, nonsingular
    b = np.random.default_rng(16).normal(size=n)
    res = jax.jit(lambda b: cg(lambda v: jnp.asarray(a) @ v, b, tol=1e-10, maxiter=10 * n))(jnp.asarray(b))
    # Run to convergence over the full Krylov space, CG's pᵢ are A-conjugate and their
    # curvatures pᵢᵀApᵢ have A's inertia (Sylvester): some are negative.
    assert bool(res.negative_curvature) and float(res.min_curvature) < 0
    assert int(res.iterations) >= n  # did not stop at the first negative pᵀAp
    np.testing.assert_allclose(res.x, np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    spd = spd_matrix(n, np.linspace(1.0, 5.0, n), seed=15)
    pos = cg(lambda v: jnp.asarray(spd) @ v, jnp.asarray(b))
    assert not bool(pos.negative_curvature) and float(pos.min_curvature) > 0


def test_cg_traced_maxiter_and_tol():
    """Under optax.inject_hyperparams maxiter and tol arrive as tracers."""
    n = 50
    a = jnp.asarray(spd_matrix(n, np.logspace(0, 4, n)))
    b = jnp.ones(n)
    traced = jax.jit(lambda b, k, tol: cg(lambda v: a @ v, b, tol=tol, maxiter=k))(b, 7, 1e-14)
    assert int(traced.iterations) == 7
    np.testing.assert_allclose(traced.x, cg(lambda v: a @ v, b, tol=1e-14, maxiter=7).x, rtol=1e-12)


def test_cg_keeps_leaf_dtypes_of_mixed_pytree():
    a = spd_matrix(6, np.linspace(1.0, 3.0, 6), seed=17)

    def matvec(v):
        out = jnp.asarray(a) @ jnp.concatenate([v["a"].astype(jnp.float64), v["b"]])
        return {"a": out[:3].astype(jnp.float32), "b": out[3:]}

    b = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(3, jnp.float64)}
    res = jax.jit(lambda b: cg(matvec, b, tol=1e-6))(b)
    assert res.x["a"].dtype == jnp.float32 and res.x["b"].dtype == jnp.float64
    np.testing.assert_allclose(np.concatenate([res.x["a"], res.x["b"]]), np.linalg.solve(a, np.ones(6)), rtol=1e-5)


def test_cg_stops_at_zero_curvature_without_stepping():
    """pᵀAp = 0 exactly (undamped, singular A) used to give α = inf and an inf/NaN solution.

    A = diag(0, 0, 0, 1, 1), b = 1: x₁ = (5/2)·1, then p₁ = (5/2)(1, 1, 1, 0, 0) has Ap₁ = 0; CG
    stops there with x = x₁, counts the iteration and reports it as negative curvature.
    """
    d = jnp.asarray([0.0, 0.0, 0.0, 1.0, 1.0])

    def matvec(v):
        return {"a": {"w": d[:3] * v["a"]["w"]}, "b": d[3:] * v["b"]}

    b = {"a": {"w": jnp.ones(3)}, "b": jnp.ones(2)}
    res = jax.jit(lambda b: cg(matvec, b, tol=1e-12, maxiter=10, save_at=(1, 2, 3)))(b)
    flat = np.concatenate([res.x["a"]["w"], res.x["b"]])
    np.testing.assert_array_equal(flat, np.full(5, 2.5))
    assert int(res.iterations) == 2 and bool(res.negative_curvature) and float(res.min_curvature) == 0.0
    np.testing.assert_allclose(float(res.residual_norm), np.sqrt(7.5), rtol=1e-14)  # ‖b − A x₁‖, finite
    np.testing.assert_allclose(float(res.objective), 0.5 * 2.5**2 * 2 - 2.5 * 5, rtol=1e-14)
    saved = np.concatenate([res.saved["a"]["w"], res.saved["b"]], axis=1)
    np.testing.assert_array_equal(saved, [[2.5] * 5, [2.5] * 5, [0.0] * 5])  # x₂ = x₁; iteration 3 not run
    # A = 0: the first direction is flat, x stays 0
    zero = cg(lambda v: jax.tree_util.tree_map(jnp.zeros_like, v), b, progress_tol=5e-4)
    assert int(zero.iterations) == 1 and bool(zero.negative_curvature)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree_util.tree_leaves(zero.x))
    # the same through hessian_free with damping 0 (the reviewer's case): a finite step, reported
    tx = hessian_free(1.0, 0.0, maxiter=10)

    def value_fn(p):
        return jnp.sum(p["a"]["w"]) + 0.5 * jnp.sum(p["b"] ** 2)

    updates, state = jax.jit(lambda p, s: tx.update(jax.grad(value_fn)(p), s, p, value_fn=value_fn))(b, tx.init(b))
    np.testing.assert_array_equal(np.concatenate([updates["a"]["w"], updates["b"]]), np.full(5, -2.5))
    assert int(collect_diagnostics(state)["cg_negative_curvature"]) == 1
