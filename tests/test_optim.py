"""Each optimizer's update against its dense closed form, under jit, pytree params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import (
    dense_ggn_ref,
    dense_hessian_ref,
    flat_grad,
    make_problem,
    recording,
    with_params_dtype,
)

from second_order.optim import collect_diagnostics, gauss_newton, hessian_free, newton

LR = 0.5


def jitted_update(tx, prob, fns=None):
    """One update under jit, every optimizer handed the same extra arguments (those of ``fns``)."""
    state = jax.jit(tx.init)(prob.params)
    grads = jax.jit(jax.grad(prob.value_fn))(prob.params)
    fns = prob if fns is None else fns

    @jax.jit
    def step(grads, state, params):
        return tx.update(
            grads,
            state,
            params,
            value_fn=fns.value_fn,
            predict_fn=fns.predict_fn,
            output_loss_fn=fns.output_loss_fn,
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


def _loss_using_optimizers():
    from second_order import optim

    return {
        "newton": lambda: optim.newton(0.1, 1.0),
        "hessian_free": lambda: optim.hessian_free(0.1, 1.0),
        "gauss_newton": lambda: optim.gauss_newton(0.1, 1.0),
        "trust_region": lambda: optim.trust_region(0.1),
        "saddle_free_newton": lambda: optim.saddle_free_newton(0.1, 1.0),
        "sophia": lambda: optim.sophia(0.1),
        "adahessian": lambda: optim.adahessian(0.1),
        "kfac": lambda: optim.kfac(0.1, 0.1),
    }


@pytest.mark.parametrize("name", list(_loss_using_optimizers()))
def test_masked_params_are_refused_with_what_to_do_instead(name):
    """optax.multi_transform hands the optimizer a tree with MaskedNode leaves, which no loss function takes."""
    prob = make_problem()
    inner = _loss_using_optimizers()[name]()
    labels = {"Dense_0": {"bias": "frozen", "kernel": "train"}, "Dense_1": {"bias": "train", "kernel": "train"}}
    tx = optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    grads = jax.grad(prob.value_fn)(prob.params)
    extra = dict(value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn,
                 tapped_predict_fn=lambda p, taps: (prob.predict_fn(p), {}))  # fmt: skip
    with pytest.raises(ValueError, match="masked params .* give the optimizer only the trained ones"):
        tx.update(grads, tx.init(prob.params), prob.params, **extra)


@pytest.mark.parametrize(
    "make",
    [
        lambda: newton(-1.0),
        lambda: newton(0.5, -2.0),
        lambda: hessian_free(0.5, 1.0, tol=1.5),
        lambda: gauss_newton(0.5, -1.0),
        lambda: hessian_free(0.5, 1.0, maxiter=0),
    ],
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


CG_KEYS = {"cg_iterations", "cg_residual", "cg_min_curvature", "cg_negative_curvature", "grad_norm", "step_norm"}
NEWTON_KEYS = {"solve_path", "min_eigenvalue", "rank", "range_residual", "grad_norm", "step_norm"}


@pytest.mark.parametrize("name", ["newton", "hessian_free", "gauss_newton"])
def test_diagnostic_keys_are_fixed(name):
    prob = make_problem(seed=8)
    tx = {"newton": newton(LR, 1.0), "hessian_free": hessian_free(LR, 1.0), "gauss_newton": gauss_newton(LR, 1.0)}[name]
    keys = NEWTON_KEYS if name == "newton" else CG_KEYS
    assert set(collect_diagnostics(tx.init(prob.params))) == keys
    _, diag, _ = jitted_update(tx, prob)
    assert set(diag) == keys


def test_cg_optimizers_default_maxiter_is_bounded():
    """Default cap 250 CG iterations (Martens 2010); maxiter=None is jax/scipy's 10·n."""
    import inspect

    for fn in (hessian_free, gauss_newton):
        assert inspect.signature(fn).parameters["maxiter"].default == 250
    prob = make_problem(seed=4, features=8, hidden=8)  # n = 99; H indefinite: CG does not converge
    n = ravel_pytree(prob.params)[0].size
    _, diag, _ = jitted_update(hessian_free(LR, 0.0, tol=1e-300), prob)
    assert int(diag["cg_iterations"]) == 250
    _, diag, _ = jitted_update(hessian_free(LR, 0.0, maxiter=None, tol=1e-300), prob)
    assert 250 < int(diag["cg_iterations"]) <= 10 * n


def test_hessian_free_reports_negative_curvature():
    prob = make_problem(seed=2, activation=jnp.tanh)
    h = dense_hessian_ref(prob)
    eig = np.linalg.eigvalsh(h)
    assert eig.min() < -1e-3, "test premise: H is indefinite"
    # λ = 0 and CG run over the whole Krylov space: the conjugate directions carry H's
    # inertia (Sylvester), so some pᵀHp < 0; CG goes on and still converges.
    _, diag, _ = jitted_update(hessian_free(LR, 0.0, maxiter=None, tol=1e-10), prob)
    assert int(diag["cg_negative_curvature"]) == 1 and float(diag["cg_min_curvature"]) < 0
    assert float(diag["cg_residual"]) <= 1e-10
    _, diag, _ = jitted_update(hessian_free(LR, 1.0 - eig.min()), prob)  # H + λI ⪰ I
    assert int(diag["cg_negative_curvature"]) == 0 and float(diag["cg_min_curvature"]) > 0


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
@pytest.mark.parametrize("product", ["float32", "float64"])
def test_product_dtype(name, product):
    """float32 parameters and data; products in ``product``, CG in float64.

    The reference is the dense curvature of the same loss at the float64-cast
    parameters: float64 products match it tightly, float32 ones to float32 accuracy.
    """
    seen: list = []
    prob = make_problem(seed=9, activation=jnp.tanh, dtype=jnp.float32)
    ref = with_params_dtype(prob, jnp.float64)
    c = dense_ggn_ref(ref) if name == "gauss_newton" else dense_hessian_ref(ref)
    lam = 2.0 - min(0.0, np.linalg.eigvalsh(c).min())
    fn = {"hessian_free": hessian_free, "gauss_newton": gauss_newton}[name]
    tx = fn(LR, lam, tol=1e-12, solve_dtype="float64", product_dtype=product)
    upd, diag, _ = jitted_update(tx, prob, fns=recording(prob, seen))
    assert upd.dtype == np.float32 and diag["grad_norm"].dtype == np.float64
    assert set(seen) == {product}  # the linearisation point is in product_dtype
    g = np.asarray(flat_grad(prob), np.float64)  # the caller's float32 gradient, as jitted_update computes it
    expected = -LR * np.linalg.solve(c + lam * np.eye(len(g)), g)
    # The float32 update's rounding (~6e-8 relative) is the floor in both cases.
    if product == "float64":
        np.testing.assert_allclose(upd, expected, rtol=2e-7, atol=1e-8 * np.abs(expected).max())
    else:
        np.testing.assert_allclose(upd, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_newton_first_step_dtype_runs_step_zero_in_float32():
    """The paper's path: step 0's Hessian and solve in float32, later steps in float64."""
    prob = make_problem(seed=10, activation=jnp.tanh, dtype=jnp.float32)
    ref = with_params_dtype(prob, jnp.float64)
    h = dense_hessian_ref(ref)
    lam = 1.0 - min(0.0, np.linalg.eigvalsh(h).min())
    tx = newton(LR, lam, solve_dtype="float64", first_step_dtype="float32")
    plain = newton(LR, lam, solve_dtype="float64")
    step = jax.jit(lambda tx, g, s, p: tx.update(g, s, p, value_fn=prob.value_fn), static_argnums=0)
    flat = lambda t: np.asarray(ravel_pytree(t)[0], np.float64)

    grads = jax.grad(prob.value_fn)(prob.params)
    upd0, state = step(tx, grads, tx.init(prob.params), prob.params)
    g = flat(grads)
    # Dense reference from float32 parameters, gradient and data, in float32.
    h32 = np.asarray(
        jax.hessian(lambda w: prob.value_fn(ravel_pytree(prob.params)[1](w)))(ravel_pytree(prob.params)[0])
    )
    assert h32.dtype == np.float32
    expected32 = -LR * np.linalg.solve(h32.astype(np.float64) + lam * np.eye(len(g)), g)
    np.testing.assert_allclose(flat(upd0), expected32, rtol=1e-4, atol=1e-6 * np.abs(expected32).max())
    upd0_64, _ = step(plain, grads, plain.init(prob.params), prob.params)
    assert not np.allclose(flat(upd0), flat(upd0_64), rtol=1e-9, atol=0), "step 0 must not be the float64 step"

    params1 = optax.apply_updates(prob.params, upd0)
    grads1 = jax.grad(prob.value_fn)(params1)
    upd1, state = step(tx, grads1, state, params1)
    h1 = dense_hessian_ref(with_params_dtype(prob._replace(params=params1), jnp.float64))
    expected1 = -LR * np.linalg.solve(h1 + lam * np.eye(len(g)), flat(grads1))
    np.testing.assert_allclose(flat(upd1), expected1, rtol=2e-7, atol=1e-8 * np.abs(expected1).max())
    assert int(state.count) == 2


@pytest.mark.parametrize("name", ["newton", "hessian_free", "gauss_newton"])
def test_inject_hyperparams_learning_rate_and_damping(name):
    prob = make_problem(seed=11, activation=jnp.tanh)
    h, gmat, g = dense_hessian_ref(prob), dense_ggn_ref(prob), flat_grad(prob)
    lam = 1.0 - min(0.0, np.linalg.eigvalsh(h).min())
    fn = {"newton": newton, "hessian_free": hessian_free, "gauss_newton": gauss_newton}[name]
    kw = {} if name == "newton" else {"tol": 1e-12}
    static = ("max_rank",) if name == "newton" else ()
    tx = optax.inject_hyperparams(fn, static_args=static)(learning_rate=LR, damping=lam, **kw)
    upd, diag, state = jitted_update(tx, prob)
    ref_upd, _, _ = jitted_update(fn(LR, lam, **kw), prob)
    np.testing.assert_allclose(upd, ref_upd, rtol=1e-12, atol=1e-14)
    assert set(diag) == (NEWTON_KEYS if name == "newton" else CG_KEYS)  # found inside InjectHyperparamsState
    # Change the injected damping (and learning rate): the step follows the dense formula.
    curvature = gmat if name == "gauss_newton" else h
    grads = jax.grad(prob.value_fn)(prob.params)
    step = jax.jit(
        lambda g, s, p: tx.update(
            g, s, p, value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn
        )
    )
    for new_lam, new_lr in ((lam + 3.0, LR), (2.0 * lam, 0.25)):
        hp = {**state.hyperparams, "damping": jnp.asarray(new_lam), "learning_rate": jnp.asarray(new_lr)}
        state = state._replace(hyperparams=hp)
        upd, _ = step(grads, state, prob.params)
        expected = -new_lr * np.linalg.solve(curvature + new_lam * np.eye(len(g)), g)
        np.testing.assert_allclose(ravel_pytree(upd)[0], expected, rtol=1e-8)


def test_newton_traced_max_rank_is_a_clear_error():
    prob = make_problem(seed=11)
    tx = optax.inject_hyperparams(newton)(learning_rate=LR, damping=1.0)
    with pytest.raises(TypeError, match="static_args"):
        jitted_update(tx, prob)


def test_newton_default_takes_low_rank_path_above_max_rank():
    """Default max_rank = 640: exact low-rank solve when n > 640, dense when n ≤ 640."""
    import inspect

    assert inspect.signature(newton).parameters["max_rank"].default == 640
    prob = make_problem(seed=12, activation=jax.nn.relu, batch=2, features=60, hidden=10)  # n = 643, rank ≤ 2·(3+20)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    assert len(g) == 643 and np.linalg.matrix_rank(h) < 640
    upd, diag, _ = jitted_update(newton(LR, 0.5), prob)
    assert int(diag["solve_path"]) == 2
    expected = -LR * np.linalg.pinv(h + 0.5 * np.eye(len(g))) @ g
    np.testing.assert_allclose(upd, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    small = make_problem(seed=12)  # n = 27 ≤ 640: dense (Cholesky here)
    _, diag, _ = jitted_update(newton(LR, 10.0), small)
    assert int(diag["solve_path"]) == 0
