"""Krylov-subspace building blocks of the trust-region and saddle-free methods.

All functions work on flat vectors (optimizers ``ravel_pytree`` their parameters),
run under ``jax.jit`` with static shapes (``lax.while_loop``, sizes fixed by Python
ints) and never synchronise with the host.  Written for this library, which depends
on jax and optax only (no ``matfree`` or scipy).

* :func:`lanczos` — symmetric Lanczos with full reorthogonalisation: ``A V ≈ V T``.
* :func:`tridiagonal`, :func:`ritz` — the projected matrix ``T = V A Vᵀ`` and its
  eigenpairs (Ritz values and vectors in the Krylov basis).
* :func:`trust_region_subproblem` — exact minimiser of ``gᵀx + ½ xᵀBx`` on
  ``‖x‖ ≤ Δ`` for a small dense ``B`` (Moré & Sorensen 1983), hard case included.
* :func:`gltr` — Newton–Lanczos trust-region step (Gould, Lucidi, Roma & Toint 1999).
* :func:`steihaug_cg` — Steihaug–Toint truncated CG (Nocedal & Wright, Alg. 7.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

MatVec = Callable[[jax.Array], jax.Array]

#: Lanczos breakdown threshold, in units of eps · ‖A qⱼ‖ (see :func:`lanczos`).
BREAKDOWN_ULPS = 10.0
#: Iteration cap of the safeguarded Newton iteration on the secular equation.
SECULAR_MAXITER = 100


class Lanczos(NamedTuple):
    """Output of :func:`lanczos` for ``k`` requested steps.

    ``basis`` (k, n): orthonormal rows ``q₀ … q_{size−1}`` spanning the Krylov space
    ``K_size(A, start)``; rows past ``size`` are zero.  ``diag`` (k,) ``αⱼ = qⱼᵀAqⱼ``,
    ``offdiag`` (k−1,) ``βⱼ = qⱼ₊₁ᵀAqⱼ``; entries past ``size`` are zero.  ``size``
    (int32): vectors built, ``k`` unless the space became invariant (breakdown) or
    ``start = 0`` (then 0).  ``residual``: ``‖(I − VᵀV) A q_{size−1}‖``, the coupling
    to the next, unbuilt, vector (≈ 0 after a breakdown), so that
    ``A Vᵀ = Vᵀ T + residual · q_next e_lastᵀ``.
    """

    basis: jax.Array
    diag: jax.Array
    offdiag: jax.Array
    size: jax.Array
    residual: jax.Array


def lanczos(matvec: MatVec, start: jax.Array, k: int) -> Lanczos:
    """``k`` steps of symmetric Lanczos from ``start`` with full reorthogonalisation.

    ``q₀ = start/‖start‖``; step ``j`` forms ``w = A qⱼ``, removes its components on
    every vector built so far, twice (classical Gram–Schmidt twice, "twice is
    enough": Giraud, Langou & Rozložník 2005), and sets ``αⱼ`` from the removed
    coefficients, ``βⱼ = ‖w‖``, ``qⱼ₊₁ = w/βⱼ`` (Lanczos 1950; Golub & Van Loan,
    Matrix Computations, §10.1).  One product with ``A`` per step; ``O(k n)`` memory.
    Breakdown: when ``βⱼ ≤ c · eps · ‖A qⱼ‖`` with ``c =`` :data:`BREAKDOWN_ULPS` (nothing
    of ``A qⱼ`` beyond the rounding of its Gram–Schmidt subtractions lies outside the span
    built so far) or ``j + 1 = n``, no vector is added and the loop stops, so ``k ≥ n``
    is allowed and gives no NaN.  Above that level the second Gram–Schmidt pass still
    makes ``qⱼ₊₁`` orthogonal to working precision, so a small but resolved ``βⱼ`` (a
    start vector with a small component along an eigenvector, e.g. a gradient nearly
    orthogonal to a negative-curvature direction) keeps growing the space; an earlier
    ``√eps`` cut-off lost such directions.  A vector added at a ``βⱼ`` that is mostly
    rounding is harmless: it is orthonormal to the rest, so Ritz values and trust-region
    models over the larger space stay valid, and it couples to the start by ``βⱼ`` only.
    direction) keeps growing the space.  ``k`` must be a Python int (it fixes shapes).
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"lanczos: k must be >= 1, got {k}")
    n = start.shape[0]
    dtype = start.dtype
    threshold = BREAKDOWN_ULPS * float(jnp.finfo(dtype).eps)
    norm0 = jnp.linalg.norm(start)
    q0 = start / jnp.where(norm0 > 0, norm0, 1.0)
    basis = jnp.zeros((k, n), dtype).at[0].set(q0)
    size = jnp.where(norm0 > 0, 1, 0).astype(jnp.int32)
    init = (jnp.int32(0), basis, jnp.zeros(k, dtype), jnp.zeros(k - 1, dtype), size, jnp.zeros((), dtype))

    def cond(state):
        j, _, _, _, size, _ = state
        return j < size

    def body(state):
        j, basis, diag, offdiag, size, _ = state
        w = matvec(basis[j]).astype(dtype)
        w_norm = jnp.linalg.norm(w)
        h1 = basis @ w
        w = w - basis.T @ h1
        h2 = basis @ w
        w = w - basis.T @ h2
        beta = jnp.linalg.norm(w)
        grow = (beta > threshold * w_norm) & (beta > 0) & (j + 1 < min(k, n))
        nxt = jnp.minimum(j + 1, k - 1)
        basis = basis.at[nxt].set(jnp.where(grow, w / jnp.where(beta > 0, beta, 1.0), basis[nxt]))
        diag = diag.at[j].set(h1[j] + h2[j])
        if k > 1:
            offdiag = offdiag.at[j].set(jnp.where(grow, beta, 0.0), mode="drop")
        size = jnp.where(grow, j + 2, size).astype(jnp.int32)
        return j + 1, basis, diag, offdiag, size, beta

    _, basis, diag, offdiag, size, residual = jax.lax.while_loop(cond, body, init)
    return Lanczos(basis, diag, offdiag, size, residual)


def tridiagonal(lz: Lanczos) -> jax.Array:
    """The dense (k, k) tridiagonal ``T = V A Vᵀ``, zero past ``size``."""
    k = lz.diag.shape[0]
    idx = jnp.arange(k)
    diag = jnp.where(idx < lz.size, lz.diag, 0.0)
    off = jnp.where(idx[:-1] < lz.size - 1, lz.offdiag, 0.0)
    return jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)


def pad_inactive(matrix: jax.Array, size: jax.Array) -> jax.Array:
    """``matrix`` with rows/columns ≥ ``size`` replaced by ``c·I``, ``c`` above every eigenvalue.

    ``c = 2 · max row |·|-sum`` of the active block (Gershgorin), 1 for a zero block.
    The padding is then inert for the dense solvers here (the right-hand side is zero
    there) and its eigenvalues sort after the active block's.
    """
    m = matrix.shape[0]
    active = jnp.arange(m) < size
    block = jnp.where(active[:, None] & active[None, :], matrix, 0.0)
    bound = jnp.max(jnp.sum(jnp.abs(block), axis=1))
    c = jnp.where(bound > 0, 2.0 * bound, 1.0)
    return block + jnp.diag(jnp.where(active, 0.0, c))


def ritz(lz: Lanczos) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigenpairs of ``T``: ``(values, vectors, active)``, ascending.

    The first ``size`` pairs are the Ritz pairs (``active`` True); the rest belong to
    the padding of :func:`pad_inactive` and sort last.
    """
    theta, q = jnp.linalg.eigh(pad_inactive(tridiagonal(lz), lz.size))
    return theta, q, jnp.arange(theta.shape[0]) < lz.size


def negative_ritz(theta: jax.Array, active: jax.Array) -> jax.Array:
    """Which active Ritz values are negative beyond rounding: ``θ < −10·k·eps·max|θ|``.

    ``k`` is the length of ``theta``.  A positive semi-definite matrix with null
    directions (e.g. the softmax shift of a network's Hessian) can give Ritz values of
    rounding size either side of 0; those do not count as negative curvature.
    """
    scale = jnp.max(jnp.where(active, jnp.abs(theta), 0.0))
    tolerance = 10.0 * theta.shape[0] * float(jnp.finfo(theta.dtype).eps) * scale
    return active & (theta < -tolerance)


class TrustRegionSolution(NamedTuple):
    """Exact trust-region step: ``x``, ``on_boundary`` (‖x‖ = Δ), ``multiplier`` μ ≥ 0."""

    x: jax.Array
    on_boundary: jax.Array
    multiplier: jax.Array


def trust_region_subproblem(
    matrix: jax.Array, g: jax.Array, radius: jax.Array | float, size: jax.Array | None = None
) -> TrustRegionSolution:
    """Global minimiser of ``m(x) = gᵀx + ½ xᵀBx`` subject to ``‖x‖ ≤ Δ`` (B small, dense, symmetric).

    ``x`` is a global minimiser iff, for some ``μ ≥ 0``: ``(B + μI) x = −g``,
    ``B + μI ⪰ 0`` and ``μ (‖x‖ − Δ) = 0`` (Moré & Sorensen 1983; Nocedal & Wright,
    Thm 4.1).  With ``B = Q diag(θ) Qᵀ`` (ascending θ) and ``γ = Qᵀg``,
    ``x(μ) = −Q (γ / (θ + μ))``.  Cases:

    * interior: ``θ₁ > 0`` and ``‖x(0)‖ ≤ Δ`` → ``x = −B⁻¹g``, μ = 0;
    * hard case: ``θ₁ ≤ 0`` (to rounding), ``γ`` ⊥ the θ₁-eigenspace S (to √eps·‖g‖)
      and ``‖x_S̄(−θ₁)‖ ≤ Δ`` → μ = max(0, −θ₁), ``x = x_S̄(μ) + τ q₁`` with τ ≥ 0
      bringing ``‖x‖`` to Δ when θ₁ < 0 (both signs of τ give the same model value);
    * otherwise the secular equation ``φ(μ) = 1/‖x(μ)‖ − 1/Δ = 0`` on
      ``(max(0, −θ₁), max(0, −θ₁) + ‖g‖/Δ]`` by Newton's method (φ is concave and
      increasing: Newton from the left converges monotonically; Moré & Sorensen)
      safeguarded by bisection, in a ``lax.while_loop`` of at most
      :data:`SECULAR_MAXITER` steps.

    ``size`` (optional): only the leading ``size × size`` block is used, ``x`` is zero
    past it (a padded Lanczos ``T``).
    """
    dtype = jnp.result_type(matrix, g)
    b = 0.5 * (matrix + matrix.T).astype(dtype)
    g = g.astype(dtype)
    m = g.shape[0]
    if size is not None:
        b = pad_inactive(b, size)
        g = jnp.where(jnp.arange(m) < size, g, 0.0)
    radius = jnp.asarray(radius, dtype)
    eps = float(jnp.finfo(dtype).eps)
    theta, q = jnp.linalg.eigh(b)
    gamma = q.T @ g
    gnorm = jnp.linalg.norm(g)
    theta1 = theta[0]
    scale = jnp.max(jnp.abs(theta))
    in_s = theta <= theta1 + 10.0 * m * eps * scale
    lo = jnp.maximum(0.0, -theta1)

    def solution(mu: jax.Array, mask: jax.Array) -> jax.Array:
        denom = theta + mu
        coef = jnp.where(mask & (denom != 0), gamma / jnp.where(denom != 0, denom, 1.0), 0.0)
        return -(q @ coef)

    x_newton = solution(jnp.zeros((), dtype), jnp.ones(m, bool))
    interior = (theta1 > 0) & (jnp.linalg.norm(x_newton) <= radius)
    x_rest = solution(lo, ~in_s)
    rest_norm = jnp.linalg.norm(x_rest)
    hard = (
        (theta1 <= 10.0 * m * eps * scale)
        & (jnp.linalg.norm(jnp.where(in_s, gamma, 0.0)) <= math.sqrt(eps) * gnorm)
        & (rest_norm <= radius)
    )
    tau = jnp.where(theta1 < 0, jnp.sqrt(jnp.maximum(radius**2 - rest_norm**2, 0.0)), 0.0)
    x_hard = x_rest + tau * q[:, 0]

    hi0 = lo + gnorm / radius

    def cond(state):
        _, _, _, it, done = state
        return (~done) & (it < SECULAR_MAXITER)

    def body(state):
        mu, lo, hi, it, _ = state
        denom = theta + mu
        ratio = jnp.where(gamma != 0, gamma / jnp.where(gamma != 0, denom, 1.0), 0.0)  # γ/(θ+μ), 0 where γ = 0
        xn2 = jnp.sum(ratio**2)
        xn = jnp.sqrt(xn2)
        phi = 1.0 / xn - 1.0 / radius
        lo = jnp.where(phi < 0, mu, lo)
        hi = jnp.where(phi > 0, mu, hi)
        dphi = jnp.sum(jnp.where(gamma != 0, ratio**2 / denom, 0.0)) / (xn2 * xn)
        newton = mu - phi / dphi
        ok = jnp.isfinite(newton) & (newton >= lo) & (newton <= hi)
        converged = jnp.abs(xn - radius) <= 4.0 * eps * radius  # then μ itself is returned
        mu_new = jnp.where(converged, mu, jnp.where(ok, newton, 0.5 * (lo + hi)))
        done = converged | (jnp.abs(mu_new - mu) <= 4.0 * eps * jnp.abs(mu)) | (hi - lo <= 4.0 * eps * hi)
        return mu_new, lo, hi, it + 1, done

    mu0 = jnp.where(theta1 > 0, 0.0, hi0)
    mu_sec, *_ = jax.lax.while_loop(cond, body, (mu0, lo, hi0, jnp.int32(0), jnp.array(False)))
    x_sec = solution(mu_sec, jnp.ones(m, bool))

    x = jnp.where(interior, x_newton, jnp.where(hard, x_hard, x_sec))
    mu = jnp.where(interior, 0.0, jnp.where(hard, lo, mu_sec))
    boundary = ~interior & (~hard | (theta1 < 0))
    return TrustRegionSolution(x, boundary, mu.astype(dtype))


class KrylovStep(NamedTuple):
    """Outcome of :func:`gltr` and :func:`steihaug_cg`.

    ``x`` the step; ``model`` ``m(x) = gᵀx + ½ xᵀBx``; ``iterations`` products with
    ``B``; ``boundary`` ‖x‖ = Δ; ``negative_curvature`` B showed a direction with
    ``pᵀBp ≤ 0`` (for GLTR a Ritz value below ``−10·k·eps·max|θ|``, so that the rounding-level
    Ritz values of a positive semi-definite ``B``'s null space do not count); ``residual`` the relative residual
    of the inner solve (‖Bx + g‖/‖g‖ for CG, ‖(B + μI)x + g‖/‖g‖ for GLTR).
    """

    x: jax.Array
    model: jax.Array
    iterations: jax.Array
    boundary: jax.Array
    negative_curvature: jax.Array
    residual: jax.Array


def gltr(matvec: MatVec, g: jax.Array, radius: jax.Array | float, k: int) -> KrylovStep:
    """Newton–Lanczos trust-region step: the exact TR minimiser on ``K_k(B, g)``.

    ``k`` Lanczos steps from ``g`` give ``V``, ``T``; since ``V g = ‖g‖ e₁``, the
    subproblem restricted to ``x = Vᵀh`` is ``min ‖g‖h₁ + ½ hᵀTh`` s.t. ``‖h‖ ≤ Δ``,
    solved exactly by :func:`trust_region_subproblem`, so the step follows negative
    curvature to the boundary (Gould, Lucidi, Roma & Toint 1999, "Solving the
    trust-region subproblem using the Lanczos method", SIAM J. Optim. 9).  With
    ``k ≥`` the dimension of the Krylov space it is the exact minimiser over the
    whole space whenever ``g`` is not orthogonal to the lowest eigenspace.
    ``residual = β_k |h_k| / ‖g‖`` (Gould et al., §5).
    """
    k = min(int(k), g.shape[0])
    lz = lanczos(matvec, g, k)
    gnorm = jnp.linalg.norm(g)
    t = tridiagonal(lz)
    g_small = jnp.zeros(k, g.dtype).at[0].set(gnorm)
    sol = trust_region_subproblem(t, g_small, radius, lz.size)
    x = lz.basis.T @ sol.x
    model = gnorm * sol.x[0] + 0.5 * sol.x @ (t @ sol.x)
    last = sol.x[jnp.maximum(lz.size - 1, 0)]
    residual = jnp.where(gnorm > 0, lz.residual * jnp.abs(last) / jnp.where(gnorm > 0, gnorm, 1.0), 0.0)
    theta, _, active = ritz(lz)
    negative = jnp.any(negative_ritz(theta, active))
    return KrylovStep(x, model, lz.size, sol.on_boundary, negative, residual)


def _boundary_roots(z: jax.Array, d: jax.Array, radius: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Roots ``τ₋ ≤ 0 ≤ τ₊`` of ``‖z + τd‖ = Δ`` for ``‖z‖ ≤ Δ``, d ≠ 0 (cancellation-free)."""
    a = d @ d
    b = 2.0 * (z @ d)
    c = z @ z - radius**2  # ≤ 0
    s = jnp.sqrt(jnp.maximum(b * b - 4.0 * a * c, 0.0))
    big = -(b + jnp.where(b >= 0, s, -s)) / 2.0  # the larger-magnitude root is big / a
    small = jnp.where(big != 0, c / jnp.where(big != 0, big, 1.0), 0.0)
    r1 = big / a
    return jnp.minimum(r1, small), jnp.maximum(r1, small)


def steihaug_cg(
    matvec: MatVec, g: jax.Array, radius: jax.Array | float, *, tol: float | jax.Array, maxiter: int
) -> KrylovStep:
    """Steihaug–Toint truncated CG for ``min gᵀx + ½ xᵀBx`` on ``‖x‖ ≤ Δ``.

    Nocedal & Wright, Numerical Optimization (2nd ed.), Algorithm 7.2 (Steihaug 1983;
    Toint 1981): CG from ``z₀ = 0`` with ``r₀ = g``, ``d₀ = −g``; it stops

    * at negative curvature ``dⱼᵀBdⱼ ≤ 0``: ``x = zⱼ + τdⱼ`` with ``‖x‖ = Δ``, of the
      two roots τ the one with the lower model value;
    * at the boundary, when ``‖zⱼ + αⱼdⱼ‖ ≥ Δ``: ``x = zⱼ + τdⱼ``, τ ≥ 0, ``‖x‖ = Δ``;
    * when ``‖rⱼ₊₁‖ ≤ tol·‖g‖`` or after ``maxiter`` products (``x`` the CG iterate).

    The iterates' norms increase and the model decreases monotonically, and the
    first iterate is the Cauchy point, so the model decrease is at least the Cauchy
    point's (Steihaug 1983).  ``m(x)`` is tracked with ``Bz = r − g`` (no extra product).
    """
    maxiter = int(maxiter)
    if maxiter < 1:
        raise ValueError(f"steihaug_cg: maxiter must be >= 1, got {maxiter}")
    dtype = g.dtype
    radius = jnp.asarray(radius, dtype)
    gg = g @ g
    threshold2 = jnp.asarray(tol, dtype) ** 2 * gg
    zero = jnp.zeros((), dtype)
    false = jnp.array(False)
    # z, r, d, rr, model, iterations, done, boundary, negative
    init = (jnp.zeros_like(g), g, -g, gg, zero, jnp.int32(0), gg <= threshold2, false, false)

    def cond(state):
        return ~state[6]

    def body(state):
        z, r, d, rr, model, it, _, _, _ = state
        bd = matvec(d).astype(dtype)
        dbd = d @ bd
        rd = r @ d
        negative = dbd <= 0
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, dbd))
        z_cg = z + alpha * d
        outside = ~negative & (z_cg @ z_cg >= radius**2)
        tau_minus, tau_plus = _boundary_roots(z, d, radius)

        def model_at(tau):  # m(z + τd) = m(z) + τ rᵀd + ½ τ² dᵀBd
            return model + tau * rd + 0.5 * tau**2 * dbd

        tau = jnp.where(negative & (model_at(tau_minus) < model_at(tau_plus)), tau_minus, tau_plus)
        stop_at_edge = negative | outside
        step = jnp.where(stop_at_edge, tau, alpha)
        z = z + step * d
        model = model_at(step)
        r = r + step * bd
        rr_new = r @ r
        converged = rr_new <= threshold2
        d = -r + (rr_new / rr) * d
        done = stop_at_edge | converged | (it + 1 >= maxiter)
        return z, r, d, rr_new, model, it + 1, done, stop_at_edge, negative

    z, r, _, rr, model, it, _, boundary, negative = jax.lax.while_loop(cond, body, init)
    gnorm = jnp.sqrt(gg)
    residual = jnp.where(gg > 0, jnp.sqrt(rr) / jnp.where(gg > 0, gnorm, 1.0), 0.0)
    return KrylovStep(z, model, it, boundary, negative, residual)
