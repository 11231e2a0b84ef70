"""Levenberg–Marquardt damping and Martens's CG options of hessian_free / gauss_newton.

float64 (conftest), nested-dict parameters, every update under jit, checked against
dense closed forms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import Problem, dense_ggn_ref, dense_hessian_ref, flat_grad, make_problem

from second_order.optim import collect_diagnostics, gauss_newton, hessian_free
from second_order.optim.base import CGState, SecondOrderState
from second_order.optim.cg_step import backtrack_iterations
from second_order.solvers import cg

LM = "levenberg_marquardt"
FNS = {"hessian_free": hessian_free, "gauss_newton": gauss_newton}
CG_KEYS = {"cg_iterations", "cg_residual", "cg_min_curvature", "cg_negative_curvature", "grad_norm", "step_norm"}


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def run(tx, prob: Problem, steps: int):
    """``steps`` jitted updates from ``prob.params``: [(params before, flat update, diagnostics)], final state."""
    step = jax.jit(
        lambda g, s, p: tx.update(
            g, s, p, value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn
        )
    )
    params, state, out = prob.params, tx.init(prob.params), []
    for _ in range(steps):
        updates, state = step(jax.grad(prob.value_fn)(params), state, params)
        out.append((params, flat(updates), {k: np.asarray(v) for k, v in collect_diagnostics(state).items()}))
        params = optax.apply_updates(params, updates)
    return out, state


def split(w: jax.Array) -> dict:
    """A flat vector of 7 as nested-dict parameters."""
    return {"layer": {"kernel": w[:4].reshape(2, 2), "bias": w[4:6]}, "scale": w[6:]}


def separable(seed: int, loss, w0: float | np.ndarray = 0.5) -> Problem:
    """``f(w) = Σᵢ loss(wᵢ − cᵢ)`` on nested params; GGN = Hessian (identity model, ℓ = Σ loss)."""
    c = jnp.asarray(np.random.default_rng(seed).normal(size=7))
    _, unravel = ravel_pytree(split(jnp.zeros(7)))
    params = split(jnp.asarray(np.broadcast_to(w0, (7,)), jnp.float64) + c)

    def predict_fn(p):
        return ravel_pytree(p)[0] - c

    def output_loss_fn(z):
        return jnp.sum(loss(z))

    del unravel
    return Problem(params, predict_fn, output_loss_fn, lambda p: output_loss_fn(predict_fn(p)))


def quadratic(seed: int = 0) -> tuple[Problem, np.ndarray]:
    """``f(w) = ½‖L w + c‖²`` (Hessian = GGN = LᵀL, PD) on nested params, and A = LᵀL."""
    rng = np.random.default_rng(seed)
    lmat, c = jnp.asarray(rng.normal(size=(12, 7))), jnp.asarray(rng.normal(size=12))

    def predict_fn(p):
        return lmat @ ravel_pytree(p)[0] + c

    def output_loss_fn(z):
        return 0.5 * jnp.sum(z**2)

    prob = Problem(
        split(jnp.asarray(rng.normal(size=7))), predict_fn, output_loss_fn, lambda p: output_loss_fn(predict_fn(p))
    )
    return prob, np.asarray(lmat.T @ lmat)


# --- Levenberg–Marquardt rule ------------------------------------------------------------


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
@pytest.mark.parametrize("maxiter", [2, 50])
def test_quadratic_model_is_exact_so_damping_shrinks_by_two_thirds(name, maxiter):
    """On a quadratic, q(s) = f(w + s) − f(w) for any s: ρ = 1 even for an inexact CG step."""
    prob, _ = quadratic()
    tx = FNS[name](0.7, 2.0, maxiter=maxiter, tol=1e-12, damping_adaptation=LM)
    steps, state = run(tx, prob, 6)
    lam = 2.0
    for _, _, diag in steps:
        assert float(diag["damping"]) == lam
        np.testing.assert_allclose(diag["rho"], 1.0, rtol=1e-9)
        lam = lam * (2.0 / 3.0)
    assert isinstance(state, CGState) and float(state.damping) == lam
    assert set(steps[0][2]) == CG_KEYS | {"damping", "rho"}


def test_damping_is_bounded_below_by_min_damping():
    prob, _ = quadratic()
    steps, state = run(gauss_newton(0.5, 1.0, damping_adaptation=LM, min_damping=0.5), prob, 3)
    assert [float(d["damping"]) for _, _, d in steps] == [1.0, 2.0 / 3.0, 0.5]
    assert float(state.damping) == 0.5


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_a_first_damping_below_min_damping_is_raised_to_it(name):
    """damping = 0.1 < min_damping = 0.5: the first solve is (A + 0.5 I) d = g, not (A + 0.1 I) d = g."""
    prob, a = quadratic()
    steps, _ = run(FNS[name](1.0, 0.1, tol=1e-14, damping_adaptation=LM, min_damping=0.5), prob, 1)
    params, update, diag = steps[0]
    assert float(diag["damping"]) == 0.5
    expected = -np.linalg.solve(a + 0.5 * np.eye(7), flat(jax.grad(prob.value_fn)(params)))
    np.testing.assert_allclose(update, expected, rtol=1e-9)


def log_cosh(z):
    return jnp.logaddexp(z, -z) - jnp.log(2.0)


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_overshooting_step_grows_damping_by_three_halves(name):
    """log cosh is flat far out: the Newton step overshoots, ρ < 1/4 (the closed form), λ ← 3/2 λ."""
    prob = separable(1, log_cosh, w0=2.0)
    lam = 0.01
    steps, state = run(FNS[name](1.0, lam, tol=1e-13, damping_adaptation=LM), prob, 1)
    _, upd, diag = steps[0]
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    d = np.linalg.solve(h + lam * np.eye(7), g)
    np.testing.assert_allclose(upd, -d, rtol=1e-9)
    w = flat(prob.params)
    f = lambda v: float(prob.value_fn(ravel_pytree(prob.params)[1](jnp.asarray(v))))
    q = -g @ d + 0.5 * d @ h @ d
    rho = (f(w - d) - f(w)) / q
    assert q < 0 and rho < 0.25
    np.testing.assert_allclose(diag["rho"], rho, rtol=1e-9)
    assert float(state.damping) == lam * 1.5


def test_predicted_increase_counts_as_failure():
    """Quadratic, η = 3, λ = 0: the model is exact (ρ = 1) but predicts an increase, q(s) > 0: λ grows."""
    prob, _ = quadratic(seed=2)
    steps, state = run(hessian_free(3.0, 1e-3, tol=1e-13, damping_adaptation=LM), prob, 1)
    _, upd, diag = steps[0]
    np.testing.assert_allclose(diag["rho"], 1.0, rtol=1e-9)
    f0 = float(prob.value_fn(prob.params))
    assert float(prob.value_fn(ravel_pytree(prob.params)[1](flat(prob.params) + upd))) > f0  # q(s) = Δf > 0
    assert float(state.damping) == 1.5e-3


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_a_zero_step_keeps_the_damping(name):
    """η = 0 (a warm-up from 0) or g = 0 (a stationary point): q = 0 and no change, ρ = 1, λ kept.

    Counted as a failure, λ grew by 3/2 every such step, to inf (float32, ~220 steps) and stuck there."""
    prob, _ = quadratic(seed=4)
    warmup = optax.linear_schedule(0.0, 0.5, transition_steps=3)
    steps, _ = run(FNS[name](warmup, 2.0, tol=1e-13, damping_adaptation=LM), prob, 4)
    assert [float(d["damping"]) for _, _, d in steps][:2] == [2.0, 2.0]  # step 0: η = 0, a zero step
    assert float(steps[0][2]["rho"]) == 1.0 and not steps[0][1].any()
    assert float(steps[2][2]["damping"]) == 2.0 * 2.0 / 3.0  # η > 0 from step 1 on: the exact model shrinks λ
    # at the minimum (exactly: the residuals w − c are 0): g = 0, every step zero, λ never moves
    target = split(jnp.linspace(-1.0, 2.0, 7))
    predict_fn = lambda p: ravel_pytree(p)[0] - ravel_pytree(target)[0]  # noqa: E731
    output_loss_fn = lambda z: jnp.sum(z**2)  # noqa: E731
    at_min = Problem(target, predict_fn, output_loss_fn, lambda p: output_loss_fn(predict_fn(p)))
    steps, state = run(FNS[name](0.5, 2.0, tol=1e-13, damping_adaptation=LM), at_min, 5)
    assert all(float(d["damping"]) == 2.0 and float(d["rho"]) == 1.0 for _, _, d in steps)
    assert float(state.damping) == 2.0


def test_non_finite_loss_grows_damping():
    """The loss is NaN outside a ball the step leaves: ρ is not finite and λ ← 3/2 λ."""
    base, _ = quadratic(seed=3)
    value_fn = lambda p: base.value_fn(p) + 0.0 * jnp.log(4.0 - jnp.sum(ravel_pytree(p)[0] ** 2))
    start = jax.tree_util.tree_map(lambda x: 0.1 * x / jnp.linalg.norm(flat(base.params)), base.params)
    prob = base._replace(params=start, value_fn=value_fn)
    assert np.isfinite(float(value_fn(start)))
    steps, state = run(hessian_free(50.0, 1e-3, tol=1e-13, damping_adaptation=LM), prob, 1)
    assert not np.isfinite(steps[0][2]["rho"])
    assert float(state.damping) == 1.5e-3


@pytest.mark.parametrize("lm_model", ["undamped", "damped"])
def test_damped_model_option_changes_rho_as_the_closed_form_says(lm_model):
    prob = make_problem(seed=3, activation=jax.nn.relu)
    gmat, g = dense_ggn_ref(prob), flat_grad(prob)
    lam, lr = 0.3, 0.8
    tx = gauss_newton(lr, lam, tol=1e-13, damping_adaptation=LM, lm_model=lm_model)
    steps, state = run(tx, prob, 1)
    _, upd, diag = steps[0]
    d = np.linalg.solve(gmat + lam * np.eye(len(g)), g)
    np.testing.assert_allclose(upd, -lr * d, rtol=1e-9)
    q = -lr * g @ d + 0.5 * lr**2 * d @ gmat @ d
    if lm_model == "damped":
        q += 0.5 * lr**2 * lam * d @ d
    actual = float(prob.value_fn(optax.apply_updates(prob.params, ravel_pytree(prob.params)[1](jnp.asarray(upd)))))
    rho = (actual - float(prob.value_fn(prob.params))) / q
    np.testing.assert_allclose(diag["rho"], rho, rtol=1e-8)
    factor = 1.5 if rho < 0.25 else (2.0 / 3.0 if rho > 0.75 else 1.0)
    assert float(state.damping) == pytest.approx(lam * factor, rel=1e-15)


# --- warm start ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_warm_started_full_cg_still_solves_the_damped_system(name):
    """CG from 0.95·(previous direction), run to convergence: d = (C + λI)⁻¹ g at every step."""
    prob = make_problem(seed=2, activation=jnp.tanh)
    dense = dense_ggn_ref if name == "gauss_newton" else dense_hessian_ref
    lam = 2.0 - min(0.0, np.linalg.eigvalsh(dense(prob)).min())
    tx = FNS[name](0.5, lam, maxiter=200, tol=1e-13, warm_start=0.95, damping_adaptation=LM, min_damping=lam)
    steps, state = run(tx, prob, 3)
    for params, upd, diag in steps:
        at = prob._replace(params=params)
        c, g = dense(at), flat_grad(at)
        lam_k = float(diag["damping"])
        assert lam_k >= lam and np.linalg.eigvalsh(c + lam_k * np.eye(len(g))).min() > 0  # premise: PD
        np.testing.assert_allclose(upd, -0.5 * np.linalg.solve(c + lam_k * np.eye(len(g)), g), rtol=1e-8)
    assert np.abs(flat(state.direction)).max() > 0  # the next start is not 0


def test_cg_from_initial_guess():
    rng = np.random.default_rng(0)
    n = 40
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = jnp.asarray((q * np.logspace(0, 2, n)) @ q.T)
    b = jnp.asarray(rng.normal(size=n))
    x_star = np.linalg.solve(a, b)
    guess = jnp.asarray(x_star + 1e-3 * rng.normal(size=n))
    cold = cg(lambda v: a @ v, b, tol=1e-10)
    warm = jax.jit(lambda b, x0: cg(lambda v: a @ v, b, tol=1e-10, x0=x0))(b, guess)
    np.testing.assert_allclose(warm.x, x_star, rtol=1e-8)
    assert int(warm.iterations) < int(cold.iterations)
    phi = 0.5 * x_star @ np.asarray(a) @ x_star - np.asarray(b) @ x_star
    np.testing.assert_allclose([cold.objective, warm.objective], phi, rtol=1e-9)
    exact = cg(lambda v: a @ v, b, tol=1e-6, x0=jnp.asarray(x_star))
    assert int(exact.iterations) == 0


# --- progress rule and backtracking ---------------------------------------------------------


def ill_conditioned(n: int = 300, seed: int = 4):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.logspace(0, 5, n)) @ q.T
    return jnp.asarray(a), jnp.asarray(rng.normal(size=n))


def test_progress_rule_stops_early_where_the_quadratic_stalls():
    a, b = ill_conditioned()
    matvec = lambda v: a @ v
    residual_only = cg(matvec, b, tol=1e-10)
    eps = 5e-4
    res = jax.jit(lambda b: cg(matvec, b, tol=1e-10, progress_tol=eps))(b)
    stop = int(res.iterations)
    assert 10 < stop < int(residual_only.iterations) // 2
    # φ at every iterate (CG with maxiter = i), from the dense matrix.
    an, bn = np.asarray(a), np.asarray(b)
    at = jax.jit(lambda i: cg(matvec, b, tol=1e-10, maxiter=i).x)
    phi = np.array([0.5 * x @ an @ x - bn @ x for x in (np.asarray(at(i)) for i in range(stop + 1))])
    assert np.all(np.diff(phi) < 0), "φ decreases along CG iterates (A is PD)"
    np.testing.assert_allclose(res.objective, phi[stop], rtol=1e-8)
    np.testing.assert_allclose(flat(res.x), np.asarray(at(stop)), rtol=1e-12)

    def rule(i):
        k = max(10, i // 10)
        return i > k and phi[i] < 0 and (phi[i] - phi[i - k]) / phi[i] < k * eps

    assert rule(stop) and not any(rule(i) for i in range(stop))
    assert residual_only.objective < res.objective  # the rest of the run still lowers φ, by little
    assert (res.objective - residual_only.objective) / -residual_only.objective < 0.05


def test_cg_keeps_the_iterates_it_is_asked_to_save():
    a, b = ill_conditioned(n=60)
    save_at = backtrack_iterations(30)
    assert save_at == (1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 24)
    res = jax.jit(lambda b: cg(lambda v: a @ v, b, tol=1e-14, maxiter=20, save_at=save_at))(b)
    assert int(res.iterations) == 20
    for j, it in enumerate(save_at):
        expected = cg(lambda v: a @ v, b, tol=1e-14, maxiter=it).x if it <= 20 else np.zeros(60)
        np.testing.assert_array_equal(np.asarray(res.saved)[j], np.asarray(expected))
    assert backtrack_iterations(250)[-4:] == (113, 147, 191, 248)


@pytest.mark.parametrize("lr, chosen", [(2.5, "first"), (1.5, "last")])
def test_backtracking_on_a_quadratic_picks_the_best_candidate(lr, chosen):
    """Quadratic, λ = 0, CG from 0: gᵀxₖ = xₖᵀAxₖ = mₖ grows with k and f(w − η xₖ) − f(w) = mₖ(η²/2 − η).

    For η > 2 the loss increases along the CG iterates (the first candidate is best),
    for η < 2 it decreases (the last one is best).
    """
    prob, amat = quadratic(seed=5)
    tx = hessian_free(lr, 0.0, maxiter=6, tol=1e-14, backtracking=True)
    steps, _ = run(tx, prob, 1)
    _, upd, diag = steps[0]
    assert int(diag["cg_iterations"]) == 6
    g = flat_grad(prob)
    at = jax.jit(lambda i: cg(lambda v: jnp.asarray(amat) @ v, jnp.asarray(g), tol=1e-14, maxiter=i).x)
    iterates = {it: flat(at(it)) for it in (1, 2, 3, 4, 5, 6)}  # one compilation: maxiter traced
    f = {
        it: float(prob.value_fn(ravel_pytree(prob.params)[1](flat(prob.params) - lr * x))) for it, x in iterates.items()
    }
    best = min(f, key=f.get)
    assert best == (1 if chosen == "first" else 6)
    assert int(diag["backtrack_iteration"]) == best
    np.testing.assert_allclose(upd, -lr * iterates[best], rtol=1e-10)


def test_backtracking_walks_back_while_the_loss_improves():
    """On an MLP (HF, H + λI ⪰ 0.1 I): the chosen iterate is the end of Martens's backward walk."""
    prob = make_problem(seed=3, activation=jnp.tanh, batch=12, hidden=6)
    h, g = dense_hessian_ref(prob), flat_grad(prob)
    lam, lr, maxiter = 0.1 - min(0.0, np.linalg.eigvalsh(h).min()), 1.0, 40
    tx = hessian_free(lr, lam, maxiter=maxiter, tol=1e-14, backtracking=True)
    steps, _ = run(tx, prob, 1)
    _, upd, diag = steps[0]
    k = int(diag["cg_iterations"])
    mat = jnp.asarray(h + lam * np.eye(len(g)))
    its = [it for it in backtrack_iterations(maxiter) if it < k] + [k]
    unravel = ravel_pytree(prob.params)[1]
    at = jax.jit(lambda i: cg(lambda v: mat @ v, jnp.asarray(g), tol=1e-14, maxiter=i).x)
    xs = {it: flat(at(it)) for it in its}  # one compilation: maxiter traced
    loss = {it: float(prob.value_fn(unravel(flat(prob.params) - lr * x))) for it, x in xs.items()}
    pick = len(its) - 1
    while pick > 0 and loss[its[pick - 1]] < loss[its[pick]]:
        pick -= 1
    assert int(diag["backtrack_iteration"]) == its[pick] < k  # here an earlier iterate wins
    np.testing.assert_allclose(upd, -lr * xs[its[pick]], rtol=1e-7, atol=1e-10)


def test_backtracking_needs_a_static_maxiter_under_inject_hyperparams():
    prob = make_problem(seed=7)
    tx = optax.inject_hyperparams(hessian_free)(learning_rate=0.5, damping=1.0, backtracking=True)
    with pytest.raises(TypeError, match="static_args"):
        run(tx, prob, 1)
    tx = optax.inject_hyperparams(hessian_free, static_args=("maxiter",))(0.5, 1.0, backtracking=True)
    run(tx, prob, 1)


# --- jit / inject_hyperparams / configuration ---------------------------------------------


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_inject_hyperparams_traced_damping_under_jit(name):
    prob = make_problem(seed=8, activation=jnp.tanh)
    fn = FNS[name]
    kw = dict(tol=1e-12, damping_adaptation=LM, warm_start=0.9, progress_tol=5e-4, min_damping=1e-4)
    plain, _ = run(fn(0.5, 3.0, **kw), prob, 3)
    tx = optax.inject_hyperparams(fn)(learning_rate=0.5, damping=3.0, **kw)
    injected, state = run(tx, prob, 3)
    for (_, u1, d1), (_, u2, d2) in zip(plain, injected):
        np.testing.assert_allclose(u2, u1, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(d2["damping"], d1["damping"], rtol=1e-14)
    # A newly injected damping restarts λ from it (traced, no retrace of the step).
    step = jax.jit(
        lambda g, s, p: tx.update(
            g, s, p, value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn
        )
    )
    grads = jax.grad(prob.value_fn)(prob.params)
    _, s1 = step(grads, state, prob.params)
    assert float(collect_diagnostics(s1)["damping"]) == float(state.inner_state.damping)
    state = state._replace(hyperparams={**state.hyperparams, "damping": jnp.asarray(7.0)})
    _, s2 = step(grads, state, prob.params)
    assert float(collect_diagnostics(s2)["damping"]) == 7.0


@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
@pytest.mark.parametrize(
    "kw, extra",
    [
        ({}, set()),
        ({"progress_tol": 5e-4}, set()),
        ({"warm_start": 0.95}, set()),
        ({"backtracking": True}, {"backtrack_iteration"}),
        (
            {"damping_adaptation": LM, "backtracking": True, "warm_start": 0.95},
            {"backtrack_iteration", "damping", "rho"},
        ),
    ],
)
def test_diagnostic_keys_are_fixed_per_configuration(name, kw, extra):
    prob = make_problem(seed=9)
    tx = FNS[name](0.5, 1.0, maxiter=20, **kw)
    state = tx.init(prob.params)
    assert isinstance(state, SecondOrderState) == (set(kw) <= {"progress_tol"})
    assert set(collect_diagnostics(state)) == CG_KEYS | extra
    steps, _ = run(tx, prob, 2)
    assert set(steps[-1][2]) == CG_KEYS | extra


def test_gauss_newton_with_adaptation_needs_value_fn():
    prob = make_problem()
    tx = gauss_newton(0.5, 1.0, damping_adaptation=LM)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(
            prob.params,
            tx.init(prob.params),
            prob.params,
            predict_fn=prob.predict_fn,
            output_loss_fn=prob.output_loss_fn,
        )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"damping_adaptation": "foo"}, "damping_adaptation must be one of None, 'levenberg_marquardt', got 'foo'"),
        ({"lm_model": "both"}, "lm_model must be one of 'undamped', 'damped', got 'both'"),
        ({"min_damping": 0.0}, "min_damping must be > 0, got 0.0"),
        ({"warm_start": 1.5}, "warm_start must lie in [0, 1] or be None, got 1.5"),
        ({"progress_tol": -1.0}, "progress_tol must be > 0 or None, got -1.0"),
        ({"backtracking": "yes"}, "backtracking must be True or False, got 'yes'"),
    ],
)
@pytest.mark.parametrize("name", ["hessian_free", "gauss_newton"])
def test_bad_options_rejected_in_the_suites_form(name, kw, message):
    with pytest.raises(ValueError) as err:
        FNS[name](0.5, 1.0, **kw)
    assert str(err.value) == f"{name}: {message}"
