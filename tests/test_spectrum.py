"""Curvature spectra (second_order.suite.spectrum) against closed forms and dense eigendecompositions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from second_order.curvature import dense_hessian, tree_cast
from second_order.suite.spectrum import (
    SpectrumSizes,
    as_columns,
    column_names,
    curvature_matvecs,
    make_curvature_probe,
    spectrum,
)

# A diagonal quadratic over nested-dict parameters: L(w) = ½ Σ dᵢ wᵢ², H = diag(d).
D = {
    "a": {"kernel": jnp.array([[3.0, -1.0, 0.5], [2.0, -0.25, 7.0]])},
    "b": jnp.array([1.5, -4.0, 0.75, 5.0, -2.0, 0.1]),
}
N = 12


def quadratic(params):
    return 0.5 * sum(jnp.sum(d * w**2) for d, w in zip(jax.tree_util.tree_leaves(D), jax.tree_util.tree_leaves(params)))


def test_diagonal_quadratic_is_exact_with_full_krylov_spaces():
    """Lanczos and SLQ with n steps are exact; Hutchinson with Rademacher probes is exact on a diagonal."""
    d = np.sort(np.asarray(ravel_pytree(D)[0]))
    params = jax.tree_util.tree_map(jnp.ones_like, D)
    sizes = SpectrumSizes(top_k=3, lanczos_steps=N, trace_probes=2, slq_probes=3, slq_steps=N, negative_tol=1e-3)
    ops = curvature_matvecs(quadratic, lambda p: p, lambda z: quadratic(z), params)
    out = jax.jit(lambda key: spectrum(ops["hessian"], params, key, sizes))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["top"], d[::-1][:3], rtol=1e-10)
    np.testing.assert_allclose(out["bottom"], d[:3], rtol=1e-10)
    np.testing.assert_allclose(out["trace"], d.sum(), rtol=1e-12)
    assert float(out["trace_sem"]) == pytest.approx(0.0, abs=1e-12)
    # Each Rademacher probe weighs every eigenvector by 1/n: nodes = eigenvalues, weights = 1/(n·probes).
    nodes, weights = np.asarray(out["slq_nodes"]), np.asarray(out["slq_weights"])
    np.testing.assert_allclose(np.sort(nodes), np.sort(np.tile(d, 3)), atol=1e-9)
    np.testing.assert_allclose(weights, 1 / (N * 3), atol=1e-12)
    assert out["neg_mass"] == pytest.approx(np.mean(d < 0), abs=1e-12)


def test_negative_tolerance_excludes_a_cluster_at_zero():
    """Eigenvalues in (−ε max|λ|, 0) are not counted as negative."""
    params = {"w": jnp.ones(4)}
    d = jnp.array([-1e-6, 0.0, 2.0, -1.0])

    def loss(p):
        return 0.5 * jnp.sum(d * p["w"] ** 2)

    sizes = SpectrumSizes(top_k=1, lanczos_steps=4, trace_probes=1, slq_probes=1, slq_steps=4, negative_tol=1e-3)
    out = spectrum(curvature_matvecs(loss, lambda p: p, loss, params)["hessian"], params, jax.random.PRNGKey(1), sizes)
    assert out["neg_mass"] == pytest.approx(0.25, abs=1e-9)


@pytest.mark.parametrize("rank", [0, 2])
def test_an_invariant_krylov_space_gives_exact_values_not_nan(rank):
    """A zero or rank-2 operator (e.g. Gauss-Newton once the softmax saturates) stops Lanczos early."""
    params = {"a": jnp.zeros(3), "b": {"c": jnp.zeros(4)}}
    u = jnp.eye(7)[:rank].T * jnp.array([5.0, -2.0])[:rank]  # A = Σ λᵢ eᵢ eᵢᵀ with λ = 5, -2

    def matvec(v):
        flat, unravel = ravel_pytree(v)
        return unravel(u @ (jnp.eye(7)[:rank] @ flat))

    sizes = SpectrumSizes(top_k=3, lanczos_steps=6, trace_probes=3, slq_probes=2, slq_steps=6)
    out = jax.jit(lambda key: spectrum(matvec, params, key, sizes))(jax.random.PRNGKey(2))
    # The Krylov space of a generic start holds one eigenvector per distinct eigenvalue (0 included).
    found = [5.0, 0.0, -2.0] if rank else [0.0]
    assert np.all(np.isfinite(out["top"][: len(found)])) and np.all(np.isnan(out["top"][len(found) :]))
    np.testing.assert_allclose(out["top"][: len(found)], found, atol=1e-12)
    np.testing.assert_allclose(out["bottom"][: len(found)], found[::-1], atol=1e-12)
    np.testing.assert_allclose(out["trace"], sum(found), atol=1e-12)  # Rademacher: exact on a diagonal
    assert float(np.sum(out["slq_weights"])) == pytest.approx(1.0, abs=1e-12)
    weights, nodes = np.asarray(out["slq_weights"]), np.asarray(out["slq_nodes"])
    assert np.all(weights[np.isnan(nodes)] == 0.0)
    assert float(out["neg_mass"]) == pytest.approx(1 / 7 if rank == 2 else 0.0, abs=1e-12)


def test_columns_match_names():
    sizes = SpectrumSizes(top_k=2, lanczos_steps=4, trace_probes=1, slq_probes=2, slq_steps=3)
    result = {
        "top": jnp.zeros(2),
        "bottom": jnp.zeros(2),
        "trace": 0.0,
        "trace_sem": 0.0,
        "neg_mass": 0.0,
        "slq_nodes": jnp.zeros(6),
        "slq_weights": jnp.zeros(6),
    }
    cols = {**as_columns("hessian", result), **as_columns("gauss_newton", result)}
    assert sorted(cols) == sorted(column_names(["hessian", "gauss_newton"], sizes))
    assert len(column_names(["hessian"], sizes)) == 2 + 2 + 3 + 6 + 6


@pytest.mark.parametrize(
    "kwargs", [{"top_k": 0}, {"top_k": 5, "lanczos_steps": 4}, {"negative_tol": 1.0}, {"slq_probes": 0}]
)
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(ValueError):
        SpectrumSizes(**kwargs)


def test_more_lanczos_steps_than_parameters_is_refused():
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="lanczos_steps = 4 exceeds the 3 parameters"):
        spectrum(lambda v: v, params, jax.random.PRNGKey(0), SpectrumSizes(top_k=1, lanczos_steps=4, slq_steps=2))


@pytest.fixture(scope="module")
def paper_batch(real_mnist_dir):
    """The paper's 784-10-10 MLP (7,960 parameters, float64) and one real MNIST batch of 64."""
    from second_order.suite.data import load_mnist
    from second_order.suite.model import MLP
    from second_order.suite.training.step import loss_functions

    data = load_mnist(real_mnist_dir)
    model = MLP(hidden=(10,), num_classes=10)
    x, y = jnp.asarray(data.train_images[:64]), jnp.asarray(data.train_labels[:64])
    params = tree_cast(model.init(jax.random.PRNGKey(0), x[:1])["params"], jnp.float64)
    return model, params, x, y, loss_functions(model.apply, x, y)


def count_below(a: np.ndarray, threshold: float) -> int:
    """Eigenvalues of the symmetric ``a`` below ``threshold``: the negative eigenvalues of D in the LDLᵀ
    factorisation of ``a − threshold·I`` (Sylvester's law of inertia; D has 1×1 and 2×2 blocks)."""
    import scipy.linalg

    _, d, _ = scipy.linalg.ldl(a - threshold * np.eye(len(a)), lower=True, check_finite=False)
    band = np.vstack([np.diag(d), np.r_[np.diag(d, -1), 0.0]])  # D is tridiagonal: banded storage
    return int(np.sum(scipy.linalg.eigvals_banded(band, lower=True) < 0))


def test_count_below_is_the_eigenvalue_count():
    a = np.random.default_rng(0).standard_normal((40, 40))
    a = a + a.T
    eig = np.linalg.eigvalsh(a)
    assert [count_below(a, t) for t in (-3.0, 0.0, 2.5)] == [int(np.sum(eig < t)) for t in (-3.0, 0.0, 2.5)]


@pytest.mark.slow
def test_hessian_spectrum_matches_the_dense_hessian_at_7960_parameters(paper_batch):
    """Default sizes against the dense 7,960 × 7,960 Hessian: its extreme eigenvalues by ARPACK (to ~1e-14
    of ``eigvalsh``, at a tenth of its time), its eigenvalue count below a threshold by Sylvester's law of
    inertia, its trace and Σλ² = ‖H‖_F² from its entries."""
    import scipy.sparse.linalg

    model, params, x, y, fns = paper_batch
    hessian = np.asarray(dense_hessian(fns.value_fn, params, chunk_size=1000))
    top = np.sort(scipy.sparse.linalg.eigsh(hessian, k=3, which="LA", return_eigenvectors=False))[::-1]
    bottom = float(scipy.sparse.linalg.eigsh(hessian, k=1, which="SA", return_eigenvectors=False)[0])
    out = jax.jit(lambda key: spectrum(curvature_matvecs(*fns[:3], params)["hessian"], params, key, SpectrumSizes()))(
        jax.random.PRNGKey(0)
    )
    np.testing.assert_allclose(out["top"], top, rtol=1e-6)
    np.testing.assert_allclose(out["bottom"][0], bottom, rtol=1e-4)
    assert float(out["bottom"][0]) < 0  # the mini-batch Hessian of a ReLU network is indefinite
    # Hutchinson: within 4 standard errors, the variance being 2(‖H‖_F² − Σ Hᵢᵢ²)/p for Rademacher probes.
    sem = np.sqrt(2 * (np.sum(hessian**2) - np.sum(np.diag(hessian) ** 2)) / SpectrumSizes().trace_probes)
    assert abs(float(out["trace"]) - np.trace(hessian)) < 4 * sem
    assert 0.5 * sem < float(out["trace_sem"]) < 2 * sem  # the logged standard error is the estimator's
    exact_mass = count_below(hessian, -1e-3 * max(abs(top[0]), abs(bottom))) / len(hessian)
    assert 0 < exact_mass < 0.05  # a few negative directions (84 of 7,960 at this batch)
    assert abs(float(out["neg_mass"]) - exact_mass) < 0.004, (float(out["neg_mass"]), exact_mass)
    assert float(np.sum(out["slq_weights"])) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.slow
def test_gauss_newton_spectrum_matches_its_closed_form(paper_batch):
    """G = Jᵀ H_z J: its nonzero eigenvalues are those of H_z^½ J Jᵀ H_z^½ (640 × 640)."""
    model, params, x, y, fns = paper_batch
    flat, unravel = ravel_pytree(params)
    jac = jax.jacrev(lambda f: fns.predict_fn(unravel(f)).reshape(-1))(flat)  # (64·10, n)
    p = jax.nn.softmax(fns.predict_fn(params), axis=-1)
    blocks = (jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]) / p.shape[0]  # H_z of the mean cross-entropy
    h_z = jax.scipy.linalg.block_diag(*blocks)
    w, v = np.linalg.eigh(np.asarray(h_z))
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ np.asarray(jac @ jac.T) @ root)
    out = jax.jit(
        lambda key: spectrum(curvature_matvecs(*fns[:3], params)["gauss_newton"], params, key, SpectrumSizes())
    )(jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["top"], eig[::-1][:3], rtol=1e-6)
    assert abs(float(out["trace"]) - eig.sum()) < 4 * float(out["trace_sem"])
    # rank ≤ 640 < n: λ_min = 0, and Ritz values are upper bounds of it (not yet converged after 40 steps)
    assert -1e-10 < float(out["bottom"][0]) < 1e-3 * eig.max()
    assert float(out["neg_mass"]) == 0.0  # positive semi-definite


def test_probe_reads_the_indexed_batch_under_jit(paper_batch):
    """make_curvature_probe on X[idx] equals spectrum on that batch; both matrices, every column."""
    from second_order.suite.training.step import loss_functions

    model, params, x, y, fns = paper_batch
    sizes = SpectrumSizes(top_k=2, lanczos_steps=10, trace_probes=2, slq_probes=2, slq_steps=5)
    probe = make_curvature_probe(
        lambda a, b: loss_functions(model.apply, a, b), ["hessian", "gauss_newton"], sizes, "float64"
    )
    idx = jnp.arange(64)[::-1]
    cols = probe(tree_cast(params, jnp.float32), x, y, idx, jax.random.PRNGKey(3))
    assert sorted(cols) == sorted(column_names(["hessian", "gauss_newton"], sizes))
    direct = spectrum(
        curvature_matvecs(*loss_functions(model.apply, x[idx], y[idx])[:3], params)["gauss_newton"],
        params,
        jax.random.fold_in(jax.random.PRNGKey(3), 1),
        sizes,
    )
    np.testing.assert_allclose(cols["gauss_newton_top1"], direct["top"][0], rtol=1e-5)
    assert cols["hessian_top1"].dtype == jnp.float64
    with pytest.raises(ValueError, match="choose from hessian, gauss_newton"):
        make_curvature_probe(lambda a, b: None, ["fisher"], sizes, "float64")
