"""Lanczos, the exact trust-region subproblem, GLTR and Steihaug CG against dense closed forms."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from second_order.krylov import gltr, lanczos, ritz, steihaug_cg, tridiagonal, trust_region_subproblem


def random_symmetric(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return (a + a.T) / 2 + shift * np.eye(n)


def random_spd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T + np.eye(n)


def model(b: np.ndarray, g: np.ndarray, x: np.ndarray) -> float:
    return float(g @ x + 0.5 * x @ b @ x)


def trs_reference(b: np.ndarray, g: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """Dense exact trust-region minimiser (x, μ): linear solves and bisection on ‖x(μ)‖ = Δ, hard case by eigh."""
    n = len(g)
    w, v = np.linalg.eigh(b)
    if w[0] > 0:
        x = np.linalg.solve(b, -g)
        if np.linalg.norm(x) <= radius:
            return x, 0.0
    lo = max(0.0, -w[0])
    low_space = v[:, w <= w[0] + 1e-10]
    if np.linalg.norm(low_space.T @ g) <= 1e-12 * np.linalg.norm(g) or np.linalg.norm(g) == 0:
        x = -np.linalg.pinv(b + lo * np.eye(n), rcond=1e-10) @ g
        if np.linalg.norm(x) <= radius:
            tau = np.sqrt(radius**2 - x @ x) if w[0] < 0 else 0.0
            return x + tau * v[:, 0], lo
    hi = lo + np.linalg.norm(g) / radius + 1.0
    for _ in range(300):
        mu = 0.5 * (lo + hi)
        if mu in (lo, hi):
            break
        if np.linalg.norm(np.linalg.solve(b + mu * np.eye(n), -g)) > radius:
            lo = mu
        else:
            hi = mu
    return np.linalg.solve(b + hi * np.eye(n), -g), hi


def assert_kkt(b, g, radius, x, mu, tol=1e-9):
    """Global optimality (Moré & Sorensen): (B + μI)x = −g, μ ≥ 0, μ(‖x‖ − Δ) = 0, B + μI ⪰ 0, ‖x‖ ≤ Δ."""
    n = len(g)
    scale = np.abs(b).max() * radius + np.linalg.norm(g)
    assert np.linalg.norm((b + mu * np.eye(n)) @ x + g) <= tol * scale
    assert mu >= 0
    assert np.linalg.norm(x) <= radius * (1 + tol)
    assert mu * abs(np.linalg.norm(x) - radius) <= tol * scale * radius
    assert np.linalg.eigvalsh(b + mu * np.eye(n)).min() >= -tol * np.abs(b).max()


def matvec_of(a):
    a = jnp.asarray(a)
    return lambda v: a @ v


# ----------------------------------------------------------------------------- Lanczos


@pytest.mark.parametrize("k", [1, 5, 12])
def test_lanczos_orthonormal_basis_and_projection(k):
    n = 20
    a = random_symmetric(n, seed=0)
    start = np.random.default_rng(1).normal(size=n)
    lz = jax.jit(lambda s: lanczos(matvec_of(a), s, k))(jnp.asarray(start))
    v, t = np.asarray(lz.basis), np.asarray(tridiagonal(lz))
    assert int(lz.size) == k and v.shape == (k, n)
    np.testing.assert_allclose(v @ v.T, np.eye(k), atol=1e-13)
    np.testing.assert_allclose(v @ a @ v.T, t, atol=1e-12)
    np.testing.assert_allclose(v[0], start / np.linalg.norm(start), atol=1e-15)
    # A Vᵀ = Vᵀ T + residual · q e_lastᵀ: the residual is what lies outside span(V)
    outside = a @ v.T - v.T @ t
    np.testing.assert_allclose(np.linalg.norm(outside), float(lz.residual), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [6, 7, 15])
def test_lanczos_breakdown_when_k_at_least_n(k):
    n = 6
    a = random_symmetric(n, seed=2)
    lz = jax.jit(lambda s: lanczos(matvec_of(a), s, k))(jnp.ones(n))
    assert int(lz.size) == n
    for field in lz:
        assert np.all(np.isfinite(np.asarray(field)))
    v = np.asarray(lz.basis)
    assert np.all(v[n:] == 0) and np.all(np.asarray(lz.diag)[n:] == 0) and np.all(np.asarray(lz.offdiag)[n - 1 :] == 0)
    np.testing.assert_allclose(v[:n] @ v[:n].T, np.eye(n), atol=1e-13)
    theta, _, active = ritz(lz)
    np.testing.assert_allclose(np.asarray(theta)[np.asarray(active)], np.linalg.eigvalsh(a), atol=1e-12)


def test_lanczos_invariant_subspace_breakdown():
    """A start vector in an exactly invariant 3-dimensional subspace: the Krylov space stops at 3.

    (A rotated eigenspace is invariant only to rounding, amplified by the Krylov polynomial:
    there the β after 3 steps is a resolved 1e-13 and Lanczos rightly goes on.)"""
    n = 10
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    a = np.zeros((n, n))
    a[:3, :3] = q @ np.diag([1.0, 2.0, 3.0]) @ q.T
    a[3:, 3:] = np.diag(np.arange(4.0, n + 1))
    start = np.concatenate([q @ np.array([1.0, -2.0, 0.5]), np.zeros(n - 3)])
    lz = jax.jit(lambda s: lanczos(matvec_of(a), s, 8))(jnp.asarray(start))
    assert int(lz.size) == 3
    assert float(lz.residual) < 1e-12
    t = np.asarray(tridiagonal(lz))
    np.testing.assert_allclose(np.linalg.eigvalsh(t[:3, :3]), [1.0, 2.0, 3.0], atol=1e-12)
    assert np.all(np.isfinite(np.asarray(lz.basis)))


def test_lanczos_zero_start():
    lz = jax.jit(lambda s: lanczos(matvec_of(np.eye(4)), s, 3))(jnp.zeros(4))
    assert int(lz.size) == 0
    assert all(np.all(np.asarray(f) == 0) for f in lz)


# ----------------------------------------------------------------------------- trust-region subproblem

solve_trs = jax.jit(trust_region_subproblem)


def test_subproblem_interior_positive_definite_is_newton_step():
    b = random_spd(7, seed=4)
    g = np.random.default_rng(5).normal(size=7)
    newton_step = np.linalg.solve(b, -g)
    x, boundary, mu = solve_trs(b, g, 2.0 * np.linalg.norm(newton_step))
    np.testing.assert_allclose(x, newton_step, rtol=1e-12)
    assert not bool(boundary) and float(mu) == 0.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [1e-3, 0.3, 2.0, 50.0])
def test_subproblem_matches_dense_reference(seed, radius):
    n = 9
    b = random_symmetric(n, seed, shift=0.5 * (seed % 3 - 1))  # mostly indefinite
    g = np.random.default_rng(100 + seed).normal(size=n)
    x, boundary, mu = solve_trs(b, g, radius)
    x, mu = np.asarray(x), float(mu)
    assert_kkt(b, g, radius, x, mu)
    x_ref, mu_ref = trs_reference(b, g, radius)
    np.testing.assert_allclose(x, x_ref, rtol=1e-8, atol=1e-10 * radius)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-8, atol=1e-10)
    if np.linalg.eigvalsh(b).min() < 0:
        assert bool(boundary)
        np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-12)


def test_subproblem_hard_case():
    """g ⊥ the lowest eigenvector and ‖(B − θ₁I)⁺g‖ < Δ: μ = −θ₁ and the step has an eigenvector part."""
    n = 6
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(n, n)))
    theta = np.array([-2.0, 0.5, 1.0, 3.0, 4.0, 7.0])
    b = q @ np.diag(theta) @ q.T
    g = q @ np.array([0.0, 1.0, -1.0, 2.0, 0.5, 1.0])
    radius = 3.0
    x, boundary, mu = solve_trs(b, g, radius)
    x = np.asarray(x)
    np.testing.assert_allclose(float(mu), 2.0, rtol=1e-12)
    assert bool(boundary)
    np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-12)
    assert abs(q[:, 0] @ x) > 1.0  # moves along the negative-curvature eigenvector
    assert_kkt(b, g, radius, x, float(mu))
    x_ref, _ = trs_reference(b, g, radius)
    np.testing.assert_allclose(model(b, g, x), model(b, g, x_ref), rtol=1e-12)
    # Same matrix, small radius: the easy case again (μ > −θ₁).
    x, _, mu = solve_trs(b, g, 0.1)
    assert float(mu) > 2.0
    assert_kkt(b, g, 0.1, np.asarray(x), float(mu))


def test_subproblem_zero_gradient_indefinite_goes_to_boundary():
    b = np.diag([-1.0, 2.0, 3.0])
    x, boundary, mu = solve_trs(b, np.zeros(3), 0.5)
    np.testing.assert_allclose(np.abs(np.asarray(x)), [0.5, 0.0, 0.0], atol=1e-15)
    assert bool(boundary) and float(mu) == 1.0
    x, boundary, mu = solve_trs(np.diag([1.0, 2.0]), np.zeros(2), 0.5)
    assert np.all(np.asarray(x) == 0) and not bool(boundary)


def test_subproblem_ignores_padding_past_size():
    b = random_symmetric(5, seed=7)
    g = np.random.default_rng(8).normal(size=5)
    padded_b = np.full((8, 8), 3.7)
    padded_b[:5, :5] = b
    padded_g = np.concatenate([g, [1.0, 2.0, 3.0]])
    x, boundary, mu = jax.jit(trust_region_subproblem)(padded_b, padded_g, 0.7, jnp.int32(5))
    x_ref, mu_ref = trs_reference(b, g, 0.7)
    np.testing.assert_allclose(np.asarray(x)[:5], x_ref, rtol=1e-9)
    assert np.all(np.asarray(x)[5:] == 0)
    np.testing.assert_allclose(float(mu), mu_ref, rtol=1e-9)


# ----------------------------------------------------------------------------- GLTR


@partial(jax.jit, static_argnames="k")
def run_gltr(b, g, radius, k):
    return gltr(lambda v: b @ v, g, radius, k)


def test_gltr_full_krylov_equals_exact_minimiser_indefinite():
    n = 12
    b = random_symmetric(n, seed=9)
    assert np.linalg.eigvalsh(b).min() < 0
    g = np.random.default_rng(10).normal(size=n)
    for radius in (0.05, 1.0, 20.0):
        res = run_gltr(b, g, radius, n + 3)
        x_ref, _ = trs_reference(b, g, radius)
        np.testing.assert_allclose(res.x, x_ref, rtol=1e-8, atol=1e-11)
        assert bool(res.boundary) and bool(res.negative_curvature)
        assert int(res.iterations) == n
        np.testing.assert_allclose(float(res.model), model(b, g, np.asarray(res.x)), rtol=1e-10)


@pytest.mark.parametrize(("dtype", "delta"), [(jnp.float32, 1e-5), (jnp.float64, 1e-9)])
def test_gltr_finds_negative_curvature_from_a_small_gradient_component(dtype, delta):
    """g = (1, δ, 0) with δ far below √eps but well above rounding: Lanczos must not break
    down after one vector, else GLTR misses the −1 direction (model −0.5 instead of −0.75)."""
    b = np.diag([1.0, -1.0, 2.0])
    g = np.array([1.0, delta, 0.0])
    res = jax.jit(lambda g_: gltr(lambda v: jnp.asarray(b, dtype) @ v, g_, jnp.asarray(1.0, dtype), 3))(
        jnp.asarray(g, dtype)
    )
    x_ref, _ = trs_reference(b, g, 1.0)
    assert int(res.iterations) == 2 and bool(res.negative_curvature)
    np.testing.assert_allclose(model(b, g, np.asarray(res.x, np.float64)), model(b, g, x_ref), rtol=1e-3)
    np.testing.assert_allclose(np.abs(np.asarray(res.x, np.float64)), np.abs(x_ref), atol=1e-3)


def test_gltr_interior_positive_definite_is_newton_step():
    n = 10
    b = random_spd(n, seed=11)
    g = np.random.default_rng(12).normal(size=n)
    res = run_gltr(b, g, 1e6, n)
    np.testing.assert_allclose(res.x, np.linalg.solve(b, -g), rtol=1e-9)
    assert not bool(res.boundary) and not bool(res.negative_curvature)
    assert float(res.residual) < 1e-10


# ----------------------------------------------------------------------------- Steihaug CG


@partial(jax.jit, static_argnames="maxiter")
def run_steihaug(b, g, radius, tol=1e-12, maxiter=200):
    return steihaug_cg(lambda v: b @ v, g, radius, tol=tol, maxiter=maxiter)


def cauchy_point(b, g, radius):
    """Nocedal & Wright (4.11)-(4.12)."""
    gbg = g @ b @ g
    gn = np.linalg.norm(g)
    tau = 1.0 if gbg <= 0 else min(gn**3 / (radius * gbg), 1.0)
    return -tau * radius / gn * g


def test_steihaug_positive_definite_large_radius_is_newton_step():
    n = 10
    b = random_spd(n, seed=13)
    g = np.random.default_rng(14).normal(size=n)
    res = run_steihaug(b, g, 1e6)
    np.testing.assert_allclose(res.x, np.linalg.solve(b, -g), rtol=1e-9)
    assert not bool(res.boundary) and not bool(res.negative_curvature)
    assert float(res.residual) <= 1e-12


def test_steihaug_radius_below_cauchy_step_is_scaled_gradient():
    n = 10
    b = random_spd(n, seed=15)
    g = np.random.default_rng(16).normal(size=n)
    cauchy_len = np.linalg.norm(g) ** 3 / (g @ b @ g)
    radius = 0.5 * cauchy_len
    res = run_steihaug(b, g, radius)
    np.testing.assert_allclose(res.x, -radius * g / np.linalg.norm(g), rtol=1e-12)
    assert bool(res.boundary) and int(res.iterations) == 1


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("radius", [0.01, 0.5, 3.0, 100.0])
def test_steihaug_never_worse_than_cauchy_point(seed, radius):
    n = 15
    b = random_spd(n, seed) if seed % 2 else random_symmetric(n, seed, shift=0.3)
    g = np.random.default_rng(200 + seed).normal(size=n)
    res = run_steihaug(b, g, radius)
    x = np.asarray(res.x)
    assert np.linalg.norm(x) <= radius * (1 + 1e-12)
    m = model(b, g, x)
    np.testing.assert_allclose(float(res.model), m, rtol=1e-9, atol=1e-12)
    assert m <= model(b, g, cauchy_point(b, g, radius)) + 1e-12 * abs(m)
    if bool(res.negative_curvature):
        assert bool(res.boundary)
        np.testing.assert_allclose(np.linalg.norm(x), radius, rtol=1e-12)


def test_steihaug_zero_gradient_and_maxiter():
    b = random_spd(6, seed=17)
    res = run_steihaug(b, np.zeros(6), 1.0)
    assert int(res.iterations) == 0 and np.all(np.asarray(res.x) == 0)
    res = run_steihaug(b, np.ones(6), 1e6, maxiter=2)
    assert int(res.iterations) == 2 and not bool(res.boundary)
