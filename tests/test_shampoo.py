"""shampoo: the preconditioned direction against dense numpy roots, grafting, stale roots, the graft-only leaves."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose_config
from flax import serialization

from second_order.optim import collect_diagnostics
from second_order.optim.shampoo import shampoo

LR = 0.1
EPS = 1e-3
DIAGNOSTICS = {"preconditioned_fraction", "root_refreshed", "condition_number", "grad_norm", "step_norm"}
EXTRA = {"value_fn": None, "predict_fn": None, "output_loss_fn": None}


def gradients(steps: int, seed: int = 0) -> list[dict]:
    """Random gradients of nested-dict parameters: a (5, 3) kernel, a (3,) bias, a (2, 4) kernel."""
    rng = np.random.default_rng(seed)
    return [
        {
            "dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3))), "bias": jnp.asarray(rng.normal(size=3))},
            "out": {"kernel": jnp.asarray(rng.normal(size=(2, 4)))},
        }
        for _ in range(steps)
    ]


PARAMS = jax.tree_util.tree_map(jnp.zeros_like, gradients(1)[0])


def run(tx, grads: list[dict], params=PARAMS) -> tuple[list[dict], list[dict], list]:
    """Jitted updates for the given gradients: (updates, diagnostics, states) per step."""
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **EXTRA))
    updates, diags, states = [], [], []
    for g in grads:
        u, state = update(g, state, params)
        updates.append(u)
        diags.append(collect_diagnostics(state))
        states.append(state)
    return updates, diags, states


def inv_root(m: np.ndarray, eps: float = EPS) -> np.ndarray:
    """(M + ε I)^{-1/4} densely with numpy."""
    lam, q = np.linalg.eigh(m + eps * np.eye(len(m)))
    return (q * lam**-0.25) @ q.T


def moments(gs: list[np.ndarray], b1: float, b2: float) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected first moment m̂ and Adam's step m̂ / (√v̂ + 1e-8) after these gradients."""
    m, v = np.zeros_like(gs[0]), np.zeros_like(gs[0])
    for g in gs:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    t = len(gs)
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return m_hat, m_hat / (np.sqrt(v_hat) + 1e-8)


def leaf(tree: dict, name: str) -> np.ndarray:
    return np.asarray(tree[name]["kernel"])


def assert_shampoo_step(update: np.ndarray, direction: np.ndarray, graft_step: np.ndarray, rtol: float = 1e-10):
    """update = −η ‖graft‖ D / ‖D‖."""
    expected = -LR * np.linalg.norm(graft_step) * direction / np.linalg.norm(direction)
    np.testing.assert_allclose(update, expected, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("b1", [0.0, 0.9])
def test_one_step_direction_is_dense_inverse_fourth_roots(b1):
    (g,) = gradients(1)
    tx = shampoo(LR, b1=b1, eps=EPS, start_preconditioning_step=0)
    (upd,), (diag,), _ = run(tx, [g])
    for name in ("dense", "out"):
        G = leaf(g, name)
        D = inv_root(G @ G.T) @ G @ inv_root(G.T @ G)
        _, adam_step = moments([G], b1, 0.999)
        assert_shampoo_step(leaf(upd, name), D, adam_step)
    # The bias takes Adam's step.
    _, adam_bias = moments([np.asarray(g["dense"]["bias"])], b1, 0.999)
    np.testing.assert_allclose(np.asarray(upd["dense"]["bias"]), -LR * adam_bias, rtol=1e-14)
    assert set(diag) == DIAGNOSTICS
    assert int(diag["root_refreshed"]) == 1
    np.testing.assert_allclose(float(diag["preconditioned_fraction"]), 23 / 26, rtol=1e-14)
    conds = []
    for name in ("dense", "out"):
        G = leaf(g, name)
        conds += [np.linalg.cond(G @ G.T + EPS * np.eye(len(G))), np.linalg.cond(G.T @ G + EPS * np.eye(G.shape[1]))]
    np.testing.assert_allclose(float(diag["condition_number"]), max(conds), rtol=1e-8)


def test_relative_eps_scales_with_the_largest_eigenvalue():
    (g,) = gradients(1, seed=9)
    (upd,), (diag,), _ = run(shampoo(LR, eps=0.1, relative_eps=True, start_preconditioning_step=0), [g])
    for name in ("dense", "out"):
        G = leaf(g, name)
        L, R = G @ G.T, G.T @ G
        D = inv_root(L, 0.1 * np.linalg.eigvalsh(L)[-1]) @ G @ inv_root(R, 0.1 * np.linalg.eigvalsh(R)[-1])
        assert_shampoo_step(leaf(upd, name), D, moments([G], 0.9, 0.999)[1])
    assert float(diag["condition_number"]) <= 11 * (1 + 1e-12)  # (1 + ε) / ε at most


@pytest.mark.parametrize("beta", [1.0, 0.9])
def test_two_steps_accumulate_statistics(beta):
    gs = gradients(2, seed=1)
    b1, b2 = 0.5, 0.99
    tx = shampoo(LR, b1=b1, b2=b2, beta=beta, eps=EPS, precondition_every=1, start_preconditioning_step=0)
    upds, _, states = run(tx, gs)
    for name in ("dense", "out"):
        G1, G2 = leaf(gs[0], name), leaf(gs[1], name)
        L = beta * G1 @ G1.T + G2 @ G2.T
        R = beta * G1.T @ G1 + G2.T @ G2
        m_hat, adam_step = moments([G1, G2], b1, b2)
        assert_shampoo_step(leaf(upds[1], name), inv_root(L) @ m_hat @ inv_root(R), adam_step)
    stats = states[1].statistics
    G1, G2 = leaf(gs[0], "dense"), leaf(gs[1], "dense")
    kernel = [s for s in stats if s is not None and s[0].shape == (5, 5)][0]
    np.testing.assert_allclose(np.asarray(kernel[0]), beta * G1 @ G1.T + G2 @ G2.T, rtol=1e-14)


@pytest.mark.parametrize("graft", ["adam", "sgd"])
def test_update_norm_is_the_grafts(graft):
    gs = gradients(6, seed=2)
    b1, b2 = 0.9, 0.999
    tx = shampoo(LR, b1=b1, b2=b2, graft=graft, precondition_every=2, start_preconditioning_step=1)
    ref = optax.adam(LR, b1=b1, b2=b2) if graft == "adam" else None
    upds, diags, _ = run(tx, gs)
    ref_state = None if ref is None else ref.init(PARAMS)
    for t, (upd, diag) in enumerate(zip(upds, diags)):
        if ref is not None:
            graft_upd, ref_state = ref.update(gs[t], ref_state, PARAMS)
        else:  # the SGD graft: the bias-corrected EMA of the gradients
            graft_upd = jax.tree_util.tree_map(
                lambda *g: -LR * moments([np.asarray(x) for x in g], b1, b2)[0], *gs[: t + 1]
            )
        for u, r in zip(jax.tree_util.tree_leaves(upd), jax.tree_util.tree_leaves(graft_upd)):
            np.testing.assert_allclose(np.linalg.norm(u), np.linalg.norm(r), rtol=1e-12)
        # Biases (1-D) always, kernels before start_preconditioning_step: exactly the graft.
        np.testing.assert_allclose(upd["dense"]["bias"], graft_upd["dense"]["bias"], rtol=1e-14)
        if t == 0:
            for name in ("dense", "out"):
                np.testing.assert_allclose(leaf(upd, name), leaf(graft_upd, name), rtol=1e-14)
            assert float(diag["preconditioned_fraction"]) == 0.0
        else:
            assert not np.allclose(leaf(upd, "dense"), leaf(graft_upd, "dense"))
            assert float(diag["preconditioned_fraction"]) > 0.8


def test_sgd_graft_without_momentum_is_sgd_on_biases():
    gs = gradients(3, seed=3)
    upds, _, _ = run(shampoo(LR, b1=0.0, graft="sgd", start_preconditioning_step=0), gs)
    for g, u in zip(gs, upds):
        np.testing.assert_array_equal(np.asarray(u["dense"]["bias"]), -LR * np.asarray(g["dense"]["bias"]))
        np.testing.assert_allclose(np.linalg.norm(leaf(u, "dense")), LR * np.linalg.norm(leaf(g, "dense")), rtol=1e-13)


def test_roots_refresh_only_every_k_steps():
    gs = gradients(7, seed=4)
    b1, k, s = 0.0, 3, 1
    tx = shampoo(LR, b1=b1, eps=EPS, precondition_every=k, start_preconditioning_step=s)
    upds, diags, _ = run(tx, gs)
    assert [int(d["root_refreshed"]) for d in diags] == [0, 1, 0, 0, 1, 0, 0]
    for name in ("dense", "out"):
        Gs = [leaf(g, name) for g in gs]
        for t in range(1, 7):
            fresh = t - (t - s) % k  # the step whose statistics the roots in use were computed from
            L = sum(G @ G.T for G in Gs[: fresh + 1])
            R = sum(G.T @ G for G in Gs[: fresh + 1])
            D = inv_root(L) @ Gs[t] @ inv_root(R)
            _, adam_step = moments(Gs[: t + 1], b1, 0.999)
            assert_shampoo_step(leaf(upds[t], name), D, adam_step)
        # Step 0 (before start): Adam.
        np.testing.assert_allclose(leaf(upds[0], name), -LR * moments(Gs[:1], b1, 0.999)[1], rtol=1e-14)
    # The condition number is carried between refreshes.
    assert diags[2]["condition_number"] == diags[1]["condition_number"] > 1
    assert float(diags[0]["condition_number"]) == 0.0


def test_large_and_scalar_leaves_take_the_graft():
    rng = np.random.default_rng(5)
    params = {"a": {"kernel": jnp.zeros((5, 3)), "scale": jnp.zeros(()), "conv": jnp.zeros((2, 2, 3))}}
    gs = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params) for _ in range(3)]
    tx = shampoo(LR, max_dim=3, start_preconditioning_step=0)  # the (2, 2, 3) conv is the (4, 3) matrix
    ref = optax.adam(LR)
    upds, diags, states = run(tx, gs, params)
    ref_state = ref.init(params)
    for g, u in zip(gs, upds):
        r, ref_state = ref.update(g, ref_state, params)
        for x, y in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(r)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-14)
    assert all(s is None for s in states[-1].statistics)
    assert float(diags[-1]["preconditioned_fraction"]) == 0.0
    # With max_dim = 5 the (5, 3) kernel and the conv's (4, 3) matrix are preconditioned.
    _, diags, _ = run(shampoo(LR, max_dim=5, start_preconditioning_step=0), gs, params)
    np.testing.assert_allclose(float(diags[0]["preconditioned_fraction"]), 27 / 28, rtol=1e-14)
    # An empty 2-D leaf (a layer of width 0) has no matrix: it takes the (empty) graft, the others as before.
    with_empty = {**params, "empty": jnp.zeros((2, 0))}
    gs_empty = [{**g, "empty": jnp.zeros((2, 0))} for g in gs]
    upds_empty, diags_empty, states = run(shampoo(LR, max_dim=5, start_preconditioning_step=0), gs_empty, with_empty)
    assert states[-1].statistics[-1] is None and upds_empty[-1]["empty"].shape == (2, 0)
    np.testing.assert_allclose(float(diags_empty[0]["preconditioned_fraction"]), 27 / 28, rtol=1e-14)


def test_conv_kernel_is_preconditioned_as_its_fan_in_by_fan_out_matrix():
    """A Flax HWIO kernel (kh, kw, in, out) steps as the matrix (kh·kw·in, out): P_L m̂ P_R reshaped back."""
    rng = np.random.default_rng(8)
    shape = (3, 3, 2, 4)
    params = {"conv": {"kernel": jnp.zeros(shape), "bias": jnp.zeros(4)}}
    gs = [
        {"conv": {"kernel": jnp.asarray(rng.normal(size=shape)), "bias": jnp.asarray(rng.normal(size=4))}}
        for _ in range(2)
    ]
    tx = shampoo(LR, eps=EPS, precondition_every=1, start_preconditioning_step=0)
    upds, diags, states = run(tx, gs, params)
    mats = [np.asarray(g["conv"]["kernel"]).reshape(18, 4) for g in gs]  # rows ordered (h, w, in)
    left, right = sum(m @ m.T for m in mats), sum(m.T @ m for m in mats)
    m_hat, graft = moments(mats, 0.9, 0.999)
    direction = inv_root(left) @ m_hat @ inv_root(right)
    assert_shampoo_step(np.asarray(upds[1]["conv"]["kernel"]).reshape(18, 4), direction, graft)
    kernel_stats = [s for s in states[1].statistics if s is not None]
    np.testing.assert_allclose(np.asarray(kernel_stats[0][0]), left, rtol=1e-14)
    np.testing.assert_allclose(float(diags[1]["preconditioned_fraction"]), 72 / 76, rtol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtypes_and_zero_gradient(dtype):
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), PARAMS)
    gs = [jax.tree_util.tree_map(jnp.zeros_like, params)] + [
        jax.tree_util.tree_map(lambda x: x.astype(dtype), g) for g in gradients(2, seed=6)
    ]
    upds, diags, states = run(shampoo(LR, start_preconditioning_step=0, precondition_every=1), gs, params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(upds[0]))
    for u, d in zip(upds, diags):
        assert all(x.dtype == dtype and np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(u))
        assert all(np.isfinite(float(v)) for v in d.values())
    assert all(s is None or s[0].dtype == jnp.float64 for s in states[-1].roots)


def test_inject_hyperparams_under_jit():
    gs = gradients(4, seed=7)
    kwargs = dict(b1=0.8, beta=0.95, eps=EPS, precondition_every=2, start_preconditioning_step=1)
    tx = optax.inject_hyperparams(shampoo, static_args=("max_dim",))(learning_rate=LR, **kwargs)
    upds, _, states = run(tx, gs)
    ref, _, _ = run(shampoo(LR, **kwargs), gs)
    for u, r in zip(upds, ref):
        np.testing.assert_allclose(np.asarray(leaf(u, "dense")), np.asarray(leaf(r, "dense")), rtol=1e-12)
    # The learning rate is traced, not baked in: one jitted function, two values.
    state = states[-1]
    step = jax.jit(lambda st: tx.update(gs[0], st, PARAMS)[0])
    half = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(LR / 2)})
    np.testing.assert_allclose(leaf(step(half), "dense"), 0.5 * leaf(step(state), "dense"), rtol=1e-14)
    # max_dim is read at init only (the state's shapes): it need not be static.
    plain = optax.inject_hyperparams(shampoo)(learning_rate=LR, **kwargs)
    for u, r in zip(run(plain, gs)[0], ref):
        np.testing.assert_allclose(np.asarray(leaf(u, "dense")), np.asarray(leaf(r, "dense")), rtol=1e-12)


def test_learning_rate_schedule_and_checkpoint_round_trip():
    gs = gradients(3, seed=8)
    schedule = optax.linear_schedule(LR, 0.0, transition_steps=2)
    upds, _, states = run(shampoo(schedule, start_preconditioning_step=0), gs)
    assert np.linalg.norm(leaf(upds[1], "dense")) > 0 and np.all(leaf(upds[2], "dense") == 0)
    restored = serialization.from_bytes(states[-1], serialization.to_bytes(states[-1]))
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(states[-1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"graft": "x"}, "shampoo: graft must be one of 'adam', 'sgd', got 'x'"),
        ({"precondition_every": 0}, "shampoo: precondition_every must be >= 1, got 0"),
        ({"start_preconditioning_step": -1}, "shampoo: start_preconditioning_step must be >= 0, got -1"),
        ({"max_dim": 0}, "shampoo: max_dim must be >= 1, got 0"),
        ({"b1": 1.0}, "shampoo: b1 must lie in [0, 1), got 1.0"),
        ({"b2": -0.1}, "shampoo: b2 must lie in [0, 1), got -0.1"),
        ({"beta": 0.0}, "shampoo: beta must lie in (0, 1], got 0.0"),
        ({"eps": 0.0}, "shampoo: eps must be > 0, got 0.0"),
        (
            {"graft_eps": -1e-8},
            "shampoo: graft_eps must be > 0 (0 gives 0/0 where a gradient was always 0; e.g. 1e-8), got -1e-08",
        ),
        (
            {"graft_eps": 0.0},
            "shampoo: graft_eps must be > 0 (0 gives 0/0 where a gradient was always 0; e.g. 1e-8), got 0.0",
        ),
        ({"learning_rate": -0.1}, "shampoo: learning_rate must be >= 0, got -0.1"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    kwargs = {"learning_rate": LR, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        shampoo(**kwargs)
    assert re.fullmatch(r"\w+: (\w+) must (.+), got (.+)", message)


def test_config_builds_and_reports_bad_values():
    from second_order.suite.cli import one_line
    from second_order.suite.experiment import prepare

    rc, tx = prepare(compose_config(["optimizer=shampoo", "data.dir=/x"]))
    assert rc.optimizer.name == "shampoo" and callable(tx.update)
    with pytest.raises(Exception) as err:
        prepare(compose_config(["optimizer=shampoo", "optimizer.graft=x", "data.dir=/x"]))
    assert one_line(err.value) == "optimizer.graft = 'x' is invalid: must be one of 'adam', 'sgd'"


def test_graft_eps_zero_is_rejected_and_a_dead_coordinate_gives_a_finite_step():
    """graft_eps = 0 used to give 0/0 = NaN on a coordinate whose gradient was always 0 (and, via the
    graft's norm, on the whole preconditioned leaf); it is refused, and the smallest positive one is safe."""
    with pytest.raises(ValueError, match=r"^shampoo: graft_eps must be > 0 \(.*\), got 0\.0$"):
        shampoo(LR, graft_eps=0.0)
    grads = gradients(2)
    for g in grads:
        g["dense"]["kernel"] = g["dense"]["kernel"].at[2].set(0.0)  # a dead input unit
        g["dense"]["bias"] = g["dense"]["bias"].at[0].set(0.0)
    updates, _, _ = run(shampoo(LR, graft_eps=1e-300, start_preconditioning_step=0, eps=EPS), grads)
    for u in updates:
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
        assert float(u["dense"]["bias"][0]) == 0.0  # a graft-only leaf: Adam's 0 / (0 + graft_eps)
        np.testing.assert_allclose(u["dense"]["kernel"][2], 0.0, atol=1e-12)  # P_L keeps the dead row apart
