"""Linear solvers for second-order steps: conjugate gradient and a dense damped solve.

Both run under ``jax.jit`` with static shapes and report what they did, so that an
optimizer can expose it as per-step diagnostics.  Pytree arithmetic is
``optax.tree_utils``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

PyTree = Any


def static_int(value: Any) -> int | None:
    """``int(value)`` when ``value`` is concrete, ``None`` when it is a tracer."""
    return None if isinstance(value, jax.core.Tracer) else int(value)


class CGResult(NamedTuple):
    """Outcome of :func:`cg`.

    ``x`` the approximate solution; ``iterations`` CG iterations run; ``residual_norm``
    the final ‖r‖ = ‖b − A x‖ (the recursively updated residual, as in scipy/jax);
    ``b_norm`` ‖b‖ (so ``residual_norm / b_norm`` is the relative residual);
    ``min_curvature`` min over iterations of pᵀAp / pᵀp (negative: A is not PD along p);
    ``negative_curvature`` True when some iteration met pᵀAp ≤ 0 (CG went on regardless)
    or zero curvature (CG stopped there: see :func:`cg`);
    ``objective`` the quadratic model φ(x) = ½ xᵀAx − bᵀx = −½ xᵀ(b + r) at ``x`` (with
    the recursive residual ``r``; two dots after the loop); ``saved`` the iterates at the
    iterations listed in ``save_at``, stacked on a leading axis (slot ``j`` holds
    ``x_{save_at[j]}`` when ``save_at[j] ≤ iterations`` and zeros otherwise; ``None``
    when ``save_at`` is empty).
    """

    x: PyTree
    iterations: jax.Array
    residual_norm: jax.Array
    b_norm: jax.Array
    min_curvature: jax.Array
    negative_curvature: jax.Array
    objective: jax.Array
    saved: PyTree = None


def progress_window(i: jax.Array) -> jax.Array:
    """Martens's look-back ``k = max(10, ⌊0.1 i⌋)`` of the relative-progress rule."""
    return jnp.maximum(10, i // 10)


def checked_save_at(save_at: Sequence[int]) -> tuple[int, ...]:
    """``save_at`` as a tuple of strictly increasing positive Python ints, or a ValueError."""
    out = tuple(int(c) for c in save_at)
    if any(c < 1 for c in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"cg: save_at must be strictly increasing integers >= 1, got {tuple(save_at)}")
    return out


def cg(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    tol: float | jax.Array = 1e-5,
    atol: float = 0.0,
    maxiter: int | jax.Array | None = None,
    x0: PyTree | None = None,
    progress_tol: float | jax.Array | None = None,
    save_at: Sequence[int] = (),
) -> CGResult:
    """Conjugate gradient for ``A x = b`` with ``A`` symmetric, started at ``x₀`` (default 0).

    Hestenes & Stiefel (1952)::

        r₀ = b − A x₀,  p₀ = r₀
        αₖ = rₖᵀrₖ / pₖᵀA pₖ,  xₖ₊₁ = xₖ + αₖ pₖ,  rₖ₊₁ = rₖ − αₖ A pₖ
        βₖ = rₖ₊₁ᵀrₖ₊₁ / rₖᵀrₖ, pₖ₊₁ = rₖ₊₁ + βₖ pₖ

    Stops when ‖r‖ ≤ max(tol·‖b‖, atol) or after ``maxiter`` iterations (``None``:
    ``10·n`` with ``n`` the number of unknowns) — the same criterion and defaults as
    ``jax.scipy.sparse.linalg.cg`` and scipy.  It does not stop on pᵀAp < 0 (as
    jax/scipy); that event is reported in ``negative_curvature``.  It does stop at zero
    curvature, ``|pₖᵀApₖ| ≤ tiny · pₖᵀpₖ`` (``tiny`` the dtype's smallest normal number;
    ``pᵀAp = 0`` exactly, e.g. undamped along a null direction of a singular A), where
    ``αₖ`` would be infinite or overflow: that iteration (its product spent, counted in
    ``iterations``) leaves ``x`` and ``r`` unchanged, sets ``negative_curvature`` and
    ends the loop (jax/scipy would return inf/NaN there).  A
    ``lax.while_loop``: jit-compatible, static shapes, no host round-trip; ``tol``,
    ``maxiter`` and ``progress_tol`` may be traced (e.g. under
    ``optax.inject_hyperparams``).

    Options, all off by default (then the iteration is exactly the one above with
    ``x₀ = 0``, ``r₀ = b`` and no extra product):

    * ``x0``: the initial guess (a pytree like ``b``); costs one product for ``r₀``,
      not counted in ``iterations``.  Martens (2010, §4.5) starts each CG run from the
      previous step's solution scaled by ζ < 1.
    * ``progress_tol`` = ε: Martens's (2010, §4.4) relative-progress rule on the
      quadratic ``φ(x) = ½ xᵀAx − bᵀx`` that CG minimises: stop at iteration ``i`` when
      ``i > k``, ``φ(xᵢ) < 0`` and ``(φ(xᵢ) − φ(xᵢ₋ₖ)) / φ(xᵢ) < k ε`` with
      ``k = max(10, ⌊0.1 i⌋)`` (the paper uses ε = 5·10⁻⁴), in addition to the residual
      rule and ``maxiter``.  φ is tracked by the exact CG identity
      ``φ(xₖ₊₁) = φ(xₖ) − ½ αₖ rₖᵀrₖ`` (from ``pₖᵀrₖ = rₖᵀrₖ``), free of products and
      dots, with ``φ(x₀) = −½ x₀ᵀ(b + r₀)``; the last ``k_max + 1`` values live in a
      ring buffer (``k_max = max(10, ⌊0.1·maxiter⌋)``, or ``max(10, n)`` when
      ``maxiter`` is traced, where ``k`` is capped at that bound).
    * ``save_at``: static, strictly increasing iterations whose iterates are copied
      into ``saved`` (for Martens's CG backtracking, §4.6); memory
      ``len(save_at) + 1`` copies of ``x`` in the loop carry, one O(n) copy per
      iteration.
    """
    n = otu.tree_size(b)
    cap = 10 * n if maxiter is None else static_int(maxiter)
    if cap is not None and cap < 0:
        raise ValueError(f"cg: maxiter must be >= 0, got {maxiter}")
    save = checked_save_at(save_at)
    limit = maxiter if cap is None else cap  # a tracer stays a tracer
    bb = otu.tree_vdot(b, b)
    dtype = bb.dtype
    threshold2 = jnp.maximum(jnp.asarray(tol, dtype) ** 2 * bb, jnp.asarray(atol, dtype) ** 2)
    inf = jnp.asarray(jnp.inf, dtype)
    tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)

    def axpy(y: PyTree, alpha: jax.Array, x: PyTree) -> PyTree:
        # y + α x with every leaf kept in its own dtype (α is in the dtype of the dots).
        return otu.tree_cast_like(otu.tree_add_scale(y, alpha, x), y)

    if x0 is None:
        x_start, r_start, rr_start = otu.tree_zeros_like(b), b, bb
        phi_start = jnp.zeros((), dtype)
    else:
        x_start = otu.tree_cast_like(x0, b)
        r_start = axpy(b, jnp.asarray(-1.0, dtype), matvec(x_start))
        rr_start = otu.tree_vdot(r_start, r_start)
        phi_start = -0.5 * (otu.tree_vdot(x_start, r_start) + otu.tree_vdot(x_start, b))

    # Optional parts of the loop carry (empty tuples when off: the default loop is unchanged).
    track = progress_tol is not None
    k_max = max(10, (cap if cap is not None else 10 * n) // 10)
    ring = k_max + 1
    eps = jnp.asarray(progress_tol if track else 0.0, dtype)
    slots = jnp.asarray(save if save else (0,), jnp.int32)

    def progress_stop(k: jax.Array, phi: jax.Array, history: jax.Array) -> jax.Array:
        window = jnp.minimum(progress_window(k), k_max)
        earlier = history[jnp.mod(k - window, ring)]
        ratio = (phi - earlier) / jnp.where(phi < 0, phi, -1.0)
        return (k > window) & (phi < 0) & (ratio < window * eps)

    def cond(state):
        _, _, _, rr, k, _, _, flat, tracked, _ = state
        go = (rr > threshold2) & (k < limit) & ~flat
        if track:
            go = go & ~progress_stop(k, *tracked)
        return go

    def body(state):
        x, r, p, rr, k, min_curv, negative, _, tracked, saved = state
        ap = matvec(p)
        pap = otu.tree_vdot(p, ap)
        pp = otu.tree_vdot(p, p)
        min_curv = jnp.minimum(min_curv, pap / pp)
        flat = jnp.abs(pap) <= tiny * pp  # zero curvature: no step along p (α would be ±inf)
        negative = negative | (pap <= 0) | flat
        alpha = jnp.where(flat, 0.0, rr / jnp.where(flat, 1.0, pap))
        x = axpy(x, alpha, p)
        r = axpy(r, -alpha, ap)
        rr_new = otu.tree_vdot(r, r)
        p = axpy(r, rr_new / rr, p)
        if track:
            phi, history = tracked
            phi = phi - 0.5 * alpha * rr
            tracked = (phi, history.at[jnp.mod(k + 1, ring)].set(phi))
        if save:
            hit = slots == k + 1
            slot = jnp.where(jnp.any(hit), jnp.argmax(hit), len(save))  # row len(save) is scratch
            saved = jax.tree_util.tree_map(lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, slot, 0), saved, x)
        return x, r, p, rr_new, k + 1, min_curv, negative, flat, tracked, saved

    tracked0: tuple = ()
    if track:
        tracked0 = (phi_start, jnp.zeros((ring,), dtype).at[0].set(phi_start))
    saved0: PyTree = ()
    if save:
        saved0 = jax.tree_util.tree_map(lambda v: jnp.zeros((len(save) + 1, *v.shape), v.dtype), x_start)
    no = jnp.array(False)
    init = (x_start, r_start, r_start, rr_start, jnp.int32(0), inf, no, no, tracked0, saved0)
    x, r, _, rr, k, min_curv, negative, _, _, saved = jax.lax.while_loop(cond, body, init)
    objective = -0.5 * (otu.tree_vdot(x, r) + otu.tree_vdot(x, b))
    kept = jax.tree_util.tree_map(lambda s: s[: len(save)], saved) if save else None
    return CGResult(x, k, jnp.sqrt(rr), jnp.sqrt(bb), min_curv, negative, objective, kept)


class DenseSolveResult(NamedTuple):
    """Outcome of :func:`damped_solve`.

    ``x`` the solution; ``used_cholesky`` True when the Cholesky path ran;
    ``min_eigenvalue`` the smallest eigenvalue of ``H + λI`` when the eigen path ran
    (``+inf`` on the Cholesky path, which does not compute it: ``+inf`` rather than NaN
    so that ``jax_debug_nans`` stays usable around it); ``rank`` the number of
    eigenvalues kept by the pseudo-inverse (``n`` on the Cholesky path).
    """

    x: jax.Array
    used_cholesky: jax.Array
    min_eigenvalue: jax.Array
    rank: jax.Array


def pinv_rtol(n: int, dtype: Any) -> float:
    """numpy/jax's default pseudo-inverse cut-off: 10 · n · eps(dtype)."""
    return 10.0 * n * float(jnp.finfo(dtype).eps)


def eigh_pinv_solve(a: jax.Array, g: jax.Array) -> DenseSolveResult:
    """x = pinv(A) g for symmetric A by the eigendecomposition A = V Λ Vᵀ.

    ``pinv(A) = V Λ⁺ Vᵀ`` with ``Λ⁺ᵢ = 1/λᵢ`` where ``|λᵢ| > rtol · maxⱼ|λⱼ|`` and 0
    elsewhere, ``rtol = 10·n·eps`` — numerically what ``jnp.linalg.pinv`` returns
    for a symmetric matrix (singular values of A are |λᵢ|).
    """
    n = a.shape[0]
    w, v = jnp.linalg.eigh(a)
    cutoff = pinv_rtol(n, a.dtype) * jnp.max(jnp.abs(w))
    keep = jnp.abs(w) > cutoff
    w_inv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
    x = v @ (w_inv * (v.T @ g))
    return DenseSolveResult(x, jnp.array(False), w[0], jnp.sum(keep).astype(jnp.int32))


def cholesky_certifies_no_truncation(a: jax.Array, chol: jax.Array) -> jax.Array:
    """True only if ``A = L Lᵀ`` is SPD with ``λ_min(A) > rtol · λ_max(A)`` (a proof, not a guess).

    With ``M = L⁻¹`` (one triangular inverse): ``A⁻¹ = Mᵀ M``, so
    ``1/λ_min = ‖A⁻¹‖₂ = ‖M‖₂² ≤ u := min(‖M‖_F², ‖M‖₁‖M‖_∞)`` (Golub & Van Loan,
    Matrix Computations, §2.3.2: ‖M‖₂² ≤ ‖M‖₁‖M‖_∞ and ‖M‖₂ ≤ ‖M‖_F); and
    ``λ_max = ‖A‖₂ ≤ v := min(trace A, ‖A‖_∞)`` (A ⪰ 0, and every induced norm bounds
    the spectral radius).  Hence ``1 > rtol · u · v`` implies
    ``λ_min ≥ 1/u > rtol · v ≥ rtol · λ_max``: no eigenvalue is below numpy's
    pseudo-inverse cut-off and ``A⁻¹ = pinv(A)``.  The pivots ``Lᵢᵢ²`` alone do not
    suffice: they bound λ_min only from above (L unit lower-triangular with −1 below
    the diagonal has unit pivots and λ_min ≈ 4⁻ⁿ).  The argument is exact for the
    matrix that the floating-point Cholesky factored, ``A + E`` with
    ``|E| ≤ γₙ₊₁|L||Lᵀ|`` (Higham 2002, Thm 10.3), and for the computed ``M`` up to
    its rounding; it is sufficient, not necessary (it may send a PD matrix with
    κ ≲ 1/rtol to the eigen path, which is then only slower).
    """
    n = a.shape[0]
    m = jax.scipy.linalg.solve_triangular(chol, jnp.eye(n, dtype=a.dtype), lower=True)
    u = jnp.minimum(jnp.sum(m * m), jnp.max(jnp.sum(jnp.abs(m), axis=0)) * jnp.max(jnp.sum(jnp.abs(m), axis=1)))
    v = jnp.minimum(jnp.trace(a), jnp.max(jnp.sum(jnp.abs(a), axis=1)))
    ok = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(m)) & jnp.isfinite(u * v)
    return ok & (pinv_rtol(n, a.dtype) * u * v < 1.0)


def damped_solve(h: jax.Array, g: jax.Array, damping: float | jax.Array) -> DenseSolveResult:
    """d = pinv(H + λI) g, by Cholesky when that provably equals the pseudo-inverse.

    Path 1 (fast): ``L Lᵀ = H + λI`` (Cholesky plus one triangular inverse, about
    2/3 n³ flops); taken when :func:`cholesky_certifies_no_truncation` proves
    ``λ_min > 10·n·eps · λ_max`` — then ``pinv`` would truncate no eigenvalue and
    ``(H + λI)⁻¹ g = pinv(H + λI) g``.
    Path 2 (fallback): symmetric eigendecomposition pseudo-inverse
    (:func:`eigh_pinv_solve`), e.g. for undamped Newton, where H is singular and
    indefinite, or an ill-conditioned PD matrix.  Only the path taken is executed
    (``lax.cond``).
    """
    n = h.shape[0]
    a = h + jnp.asarray(damping, h.dtype) * jnp.eye(n, dtype=h.dtype)
    chol = jnp.linalg.cholesky(a)
    ok = cholesky_certifies_no_truncation(a, chol)

    def by_cholesky(_):
        x = jax.scipy.linalg.cho_solve((chol, True), g)
        return DenseSolveResult(x, jnp.array(True), jnp.array(jnp.inf, a.dtype), jnp.int32(n))

    def by_eigh(_):
        return eigh_pinv_solve(a, g)

    return jax.lax.cond(ok, by_cholesky, by_eigh, None)


class LowRankSolveResult(NamedTuple):
    """Outcome of :func:`low_rank_damped_solve`.

    ``verified`` is False when the sketch did not capture the range of H (then ``x``
    must not be used); ``range_residual`` the largest relative probe residual
    ‖(I − QQᵀ) H ω‖ / (σ_max ‖ω‖); other fields as in :class:`DenseSolveResult`.
    """

    x: jax.Array
    verified: jax.Array
    min_eigenvalue: jax.Array
    rank: jax.Array
    range_residual: jax.Array


def low_rank_damped_solve(
    matmat: Callable[[jax.Array], jax.Array],
    g: jax.Array,
    damping: float | jax.Array,
    sketch_size: int,
    key: jax.Array,
    *,
    num_probes: int = 8,
) -> LowRankSolveResult:
    """d = pinv(H + λI) g for a symmetric H of rank < ``sketch_size``, from products H V only.

    Randomized range finder (Halko, Martinsson & Tropp 2011): ``Y = H Ω`` for a
    Gaussian ``Ω`` with ``k = sketch_size`` columns, ``Q = qr(Y)``.  If range(H) ⊆
    span(Q) then ``H = Q T Qᵀ`` with ``T = Qᵀ H Q`` (k × k), and with ``T = V Λ Vᵀ``
    the eigenvalues of ``H + λI`` are ``Λ + λ`` (on span Q) and ``λ`` (on its
    complement), so exactly::

        pinv(H + λI) g = Q V f(Λ + λ) Vᵀ Qᵀ g + f(λ) (g − Q Qᵀ g)

    with ``f(s) = 1/s`` when ``|s| > rtol · max|eig|`` and 0 otherwise (numpy's
    pseudo-inverse cut-off, ``rtol = 10·n·eps``).  Cost: 2k + p products with H, a QR
    of n × k and an eigendecomposition of k × k, instead of n products and an n × n
    eigendecomposition.  ``verified`` checks the premise numerically on ``p =
    num_probes`` fresh Gaussian vectors: ‖(I − QQᵀ) H ω‖ ≤ rtol · σ_max · ‖ω‖ for all
    of them; a missed direction would then carry an eigenvalue that the cut-off
    discards anyway (with probability ≥ 1 − 10⁻ᵖ by Halko et al., Lemma 4.1).
    """
    n = g.shape[0]
    dtype = g.dtype
    k = int(sketch_size)
    if not 0 < k < n:
        raise ValueError(f"low_rank_damped_solve: sketch_size must be in (0, {n}), got {k}")
    omega = jax.random.normal(key, (n, k + num_probes), dtype)
    y = matmat(omega)
    q, _ = jnp.linalg.qr(y[:, :k])
    hq = matmat(q)
    t = q.T @ hq
    t = 0.5 * (t + t.T)
    w, v = jnp.linalg.eigh(t)
    lam = jnp.asarray(damping, dtype)
    rtol = pinv_rtol(n, dtype)
    sigma_max = jnp.maximum(jnp.max(jnp.abs(w)), 0.0)
    # Verification on probes that did not enter Q.
    probes = y[:, k:]
    resid = probes - q @ (q.T @ probes)
    probe_norms = jnp.linalg.norm(omega[:, k:], axis=0)
    range_residual = jnp.max(jnp.linalg.norm(resid, axis=0) / probe_norms) / jnp.where(sigma_max > 0, sigma_max, 1.0)
    verified = jnp.isfinite(range_residual) & (range_residual <= rtol)
    eig = w + lam
    cutoff = rtol * jnp.maximum(jnp.max(jnp.abs(eig)), jnp.abs(lam))
    keep = jnp.abs(eig) > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, eig, 1.0), 0.0)
    qtg = q.T @ g
    inside = q @ (v @ (inv * (v.T @ qtg)))
    outside_scale = jnp.where(jnp.abs(lam) > cutoff, 1.0 / jnp.where(lam != 0, lam, 1.0), 0.0)
    x = inside + outside_scale * (g - q @ qtg)
    rank = jnp.sum(jnp.abs(w) > rtol * sigma_max).astype(jnp.int32)
    min_eig = jnp.minimum(jnp.min(eig), lam)  # λ is an eigenvalue on the complement of span Q
    return LowRankSolveResult(x, verified, min_eig, rank, range_residual)
