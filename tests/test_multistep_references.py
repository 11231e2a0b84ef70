"""Several steps of the adaptive methods against plain numpy transcriptions, on a coupled network.

The single-step tests of each method use quadratics, diagonal Hessians or one layer. Here a
2-layer tanh MLP (nested-dict parameters, float64, every update under jit) has a dense,
indefinite Hessian, so the probes' off-diagonal coupling (Sophia, AdaHessian), both K-FAC
layers, and a damping λ or radius Δ that grows and shrinks over the steps are exercised.
Each reference is written from the method's paper and docstring, not from its code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from jax.flatten_util import ravel_pytree

from second_order.optim import adahessian, collect_diagnostics, gauss_newton, hessian_free, kfac, sophia, trust_region


class Net:
    """``z = tanh(x W0 + b0) W1 + b1`` with mean softmax cross-entropy on random data (numpy's generator)."""

    def __init__(self, seed: int, batch: int = 8, features: int = 4, hidden: int = 3, classes: int = 3):
        rng = np.random.default_rng(seed)
        self.params = {
            "Dense_0": {"kernel": rng.standard_normal((features, hidden)), "bias": 0.1 * rng.standard_normal(hidden)},
            "Dense_1": {"kernel": rng.standard_normal((hidden, classes)), "bias": 0.1 * rng.standard_normal(classes)},
        }
        self.params = jax.tree_util.tree_map(jnp.asarray, self.params)
        self.x = rng.standard_normal((batch, features))
        self.y = rng.integers(0, classes, batch)
        self.unravel = ravel_pytree(self.params)[1]

    def tapped(self, p, taps):
        """(outputs, each layer's input) with ``taps`` added to the pre-activations (K-FAC's contract)."""
        s0 = self.x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        h = jnp.tanh(s0 if taps is None else s0 + taps["Dense_0"])
        s1 = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
        return (s1 if taps is None else s1 + taps["Dense_1"]), {"Dense_0": jnp.asarray(self.x), "Dense_1": h}

    def predict(self, p):
        return self.tapped(p, None)[0]

    def output_loss(self, z):
        return optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(self.y)).mean()

    def value(self, p):
        return self.output_loss(self.predict(p))

    def extra(self) -> dict:
        return dict(
            value_fn=self.value,
            predict_fn=self.predict,
            output_loss_fn=self.output_loss,
            tapped_predict_fn=self.tapped,
        )

    # numpy views at a flat parameter vector w
    def loss(self, w: np.ndarray) -> float:
        return float(self.value(self.unravel(jnp.asarray(w))))

    def grad(self, w: np.ndarray) -> np.ndarray:
        return flat(jax.grad(self.value)(self.unravel(jnp.asarray(w))))

    def hessian(self, w: np.ndarray) -> np.ndarray:
        return np.asarray(jax.hessian(lambda v: self.value(self.unravel(v)))(jnp.asarray(w)))

    def ggn(self, w: np.ndarray) -> np.ndarray:
        z = self.predict(self.unravel(jnp.asarray(w)))
        jac = np.asarray(jax.jacobian(lambda v: self.predict(self.unravel(v)))(jnp.asarray(w))).reshape(z.size, -1)
        h_z = np.asarray(jax.hessian(self.output_loss)(z)).reshape(z.size, z.size)
        return jac.T @ h_z @ jac


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def run(tx, net: Net, steps: int) -> tuple[list[np.ndarray], list[dict]]:
    """The flat updates and the diagnostics of ``steps`` jitted steps from ``net.params``."""
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **net.extra()))
    params, state, updates, diagnostics = net.params, tx.init(net.params), [], []
    for _ in range(steps):
        u, state = step(jax.grad(net.value)(params), state, params)
        params = optax.apply_updates(params, u)
        updates.append(flat(u))
        diagnostics.append({k: float(v) for k, v in collect_diagnostics(state).items()})
    return updates, diagnostics


def library_probes(seed: int, params) -> Iterator[np.ndarray]:
    """The documented probe stream: the key ``PRNGKey(seed)`` split per draw, float32 Rademacher signs per leaf."""
    key = jax.random.PRNGKey(seed)
    while True:
        key, sub = jax.random.split(key)
        yield flat(otu.tree_random_like(sub, params, jax.random.rademacher, dtype=jnp.float32)).astype(np.float64)


def assert_steps_close(got: list[np.ndarray], expected: list[np.ndarray], rtol: float) -> None:
    scale = max(np.abs(e).max() for e in expected)
    for t, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=f"step {t}")


# --------------------------------------------------------------------------- diagonal methods


@pytest.mark.parametrize("k", [1, 2])
def test_sophia_over_steps_with_a_coupled_hessian(k):
    """Liu et al. (2023) as optax orders it: step from the stale h, then h ← β2 h + (1−β2) z⊙Hz every k steps."""
    net = Net(seed=1)
    lr, b1, b2, eps, wd, gamma, clip = 0.05, 0.9, 0.95, 1e-8, 1e-3, 20.0, 1.0
    got, diags = run(sophia(lr, b1, b2, eps, wd, gamma, clip, update_interval=k), net, 6)
    probes = library_probes(0, net.params)
    w = flat(net.params)
    m, h, expected = np.zeros_like(w), np.zeros_like(w), []
    clipped = []
    for t in range(1, 7):
        g = net.grad(w)
        m = b1 * m + (1 - b1) * g
        ratio = (m / (1 - b1**t)) / np.maximum(gamma * h, eps)
        clipped.append(np.mean(np.abs(ratio) >= clip))
        u = -lr * (np.clip(ratio, -clip, clip) + wd * w)
        if (t - 1) % k == 0:
            z = next(probes)
            h = b2 * h + (1 - b2) * z * (net.hessian(w) @ z)
        expected.append(u)
        w = w + u
    assert_steps_close(got, expected, rtol=1e-12)
    np.testing.assert_allclose([d["clip_fraction"] for d in diags], clipped, rtol=1e-12)
    assert 0 < min(clipped[1:]) and max(clipped[1:]) < 1, "test premise: some but not all coordinates clipped"
    np.testing.assert_allclose(diags[-1]["hessian_mean"], h.mean(), rtol=1e-10)


@pytest.mark.parametrize("hessian_power, weight_decay", [(1.0, 0.0), (0.5, 0.01)])
def test_adahessian_over_steps_with_a_coupled_hessian(hessian_power, weight_decay):
    """Yao et al. (2021): D = |z ⊙ Hz|, v ← β2 v + (1−β2) D², w ← w − η (m̂ / (v̂^{k/2} + ε) + wd·w)."""
    net = Net(seed=2)
    lr, b1, b2, eps = 0.15, 0.9, 0.999, 1e-4
    got, diags = run(adahessian(lr, b1, b2, eps, hessian_power=hessian_power, weight_decay=weight_decay), net, 6)
    probes = library_probes(0, net.params)
    w = flat(net.params)
    m, v, expected = np.zeros_like(w), np.zeros_like(w), []
    for t in range(1, 7):
        g, z = net.grad(w), next(probes)
        d = np.abs(z * (net.hessian(w) @ z))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d**2
        u = -lr * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) ** hessian_power + eps) + weight_decay * w)
        expected.append(u)
        w = w + u
    assert_steps_close(got, expected, rtol=1e-12)
    np.testing.assert_allclose(diags[-1]["hessian_diag_mean"], d.mean(), rtol=1e-12)


# --------------------------------------------------------------------------- K-FAC


def kfac_factors(net: Net, w: np.ndarray, fisher: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A = E[ā āᵀ] and G = E[δ δᵀ] of both layers by hand back-propagation (Martens & Grosse 2015, §3)."""
    p = jax.tree_util.tree_map(np.asarray, net.unravel(jnp.asarray(w)))
    w1 = p["Dense_1"]["kernel"]
    h = np.tanh(net.x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    z = h @ w1 + p["Dense_1"]["bias"]
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    n, classes = z.shape

    def deltas(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d1 = prob - np.eye(classes)[label]  # ∂ℓₙ/∂z of one example's loss
        return (d1 @ w1.T) * (1 - h**2), d1

    if fisher == "exact":  # Σ_c p_c δ_c δ_cᵀ
        g0, g1 = np.zeros((h.shape[1],) * 2), np.zeros((classes, classes))
        for c in range(classes):
            d0, d1 = deltas(np.full(n, c))
            g0 = g0 + (prob[:, c : c + 1] * d0).T @ d0 / n
            g1 = g1 + (prob[:, c : c + 1] * d1).T @ d1 / n
    else:  # empirical: the true labels
        d0, d1 = deltas(net.y)
        g0, g1 = d0.T @ d0 / n, d1.T @ d1 / n
    a0, a1 = np.c_[net.x, np.ones(n)], np.c_[h, np.ones(n)]
    return {"Dense_0": (a0.T @ a0 / n, g0), "Dense_1": (a1.T @ a1 / n, g1)}


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_over_steps_on_both_layers(fisher):
    """EMA weight min(1 − 1/k, ema), π-adjusted damped inverses every 2 steps, heavy-ball momentum."""
    net = Net(seed=3, batch=7)
    lr, lam, mu, ema, every, steps = 0.3, 0.05, 0.5, 0.9, 2, 5
    got, diags = run(kfac(lr, lam, momentum=mu, ema=ema, inverse_every=every, fisher=fisher), net, steps)
    w = flat(net.params)
    factors, inverses, velocity, expected = {}, {}, 0.0, []
    for t in range(steps):
        weight = min(1 - 1 / (t + 1), ema)  # 0 at the first step: the factors start at its estimate
        for name, fresh in kfac_factors(net, w, fisher).items():
            old = factors.get(name, (0.0, 0.0))
            factors[name] = (weight * old[0] + (1 - weight) * fresh[0], weight * old[1] + (1 - weight) * fresh[1])
        if t % every == 0:
            for name, (a, g) in factors.items():
                pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
                inverses[name] = (
                    np.linalg.inv(a + pi * np.sqrt(lam) * np.eye(len(a))),
                    np.linalg.inv(g + np.sqrt(lam) / pi * np.eye(len(g))),
                )
        grads = net.unravel(jnp.asarray(net.grad(w)))
        step = {}
        for name, (a_inv, g_inv) in inverses.items():
            stacked = np.r_[np.asarray(grads[name]["kernel"]), np.asarray(grads[name]["bias"])[None]]
            delta = a_inv @ stacked @ g_inv
            step[name] = {"kernel": delta[:-1], "bias": delta[-1]}
        velocity = flat(step) + mu * velocity
        expected.append(-lr * velocity)
        w = w + expected[-1]
    assert_steps_close(got, expected, rtol=1e-10)
    np.testing.assert_allclose(diags[-1]["step_norm"], np.linalg.norm(velocity), rtol=1e-10)


# --------------------------------------------------------------------------- Levenberg–Marquardt


def lm_reference(net: Net, curvature: Callable, lr: float, damping: float, model: str, steps: int):
    """Martens (2010) §4.1: s = −η (C + λI)⁻¹ g, ρ = (L(w+s) − L(w)) / q(s); ρ < ¼ → λ·3/2, ρ > ¾ → λ·2/3."""
    w, out = flat(net.params), []
    for _ in range(steps):
        g, c = net.grad(w), curvature(w)
        s = -lr * np.linalg.solve(c + damping * np.eye(len(w)), g)
        q = g @ s + 0.5 * s @ c @ s + (0.5 * damping * s @ s if model == "damped" else 0.0)
        rho = (net.loss(w + s) - net.loss(w)) / q
        out.append((s, damping, rho))
        if not np.isfinite(rho) or rho < 0.25 or q >= 0:
            damping *= 1.5
        elif rho > 0.75:
            damping *= 2 / 3
        w = w + s
    return out


@pytest.mark.parametrize(
    "method, lr, damping, model, rtol",
    [
        ("hessian_free", 1.0, 0.5, "undamped", 1e-9),
        ("hessian_free", 0.6, 0.2, "undamped", 1e-7),
        ("gauss_newton", 1.9, 0.05, "damped", 1e-6),  # a GGN of rank 16 of 27: CG rounding shows
    ],
)
def test_levenberg_marquardt_over_steps_on_a_network(method, lr, damping, model, rtol):
    net = Net(seed=4)
    factory, curvature = {"hessian_free": (hessian_free, net.hessian), "gauss_newton": (gauss_newton, net.ggn)}[method]
    tx = factory(lr, damping, maxiter=None, tol=1e-12, damping_adaptation="levenberg_marquardt", lm_model=model)
    got, diags = run(tx, net, 6)
    expected = lm_reference(net, curvature, lr, damping, model, 6)
    lams = [e[1] for e in expected]
    assert any(b > a for a, b in zip(lams, lams[1:])) and any(b < a for a, b in zip(lams, lams[1:])), lams
    np.testing.assert_allclose([d["damping"] for d in diags], lams, rtol=1e-12)
    np.testing.assert_allclose([d["rho"] for d in diags], [e[2] for e in expected], rtol=1e3 * rtol)
    assert_steps_close(got, [e[0] for e in expected], rtol=rtol)


# --------------------------------------------------------------------------- trust region


def steihaug_reference(b: np.ndarray, g: np.ndarray, radius: float, tol: float, maxiter: int) -> np.ndarray:
    """Nocedal & Wright, Alg. 7.2 (CG from 0; stop at negative curvature, the boundary or residual tol)."""
    z, r, d = np.zeros_like(g), g.copy(), -g.copy()

    def to_boundary(z, d, larger_only: bool) -> np.ndarray:
        a, half_b, c = d @ d, z @ d, z @ z - radius**2
        roots = [(-half_b - s * np.sqrt(half_b**2 - a * c)) / a for s in (-1.0, 1.0)]
        if larger_only:
            return z + max(roots) * d
        return min((z + t * d for t in roots), key=lambda p: g @ p + 0.5 * p @ b @ p)

    for _ in range(maxiter):
        curvature = d @ b @ d
        if curvature <= 0:
            return to_boundary(z, d, larger_only=False)
        alpha = (r @ r) / curvature
        if np.linalg.norm(z + alpha * d) >= radius:
            return to_boundary(z, d, larger_only=True)
        z, r_new = z + alpha * d, r + alpha * (b @ d)
        if np.linalg.norm(r_new) <= tol * np.linalg.norm(g):
            return z
        d, r = -r_new + (r_new @ r_new) / (r @ r) * d, r_new
    return z


def exact_subproblem_reference(b: np.ndarray, g: np.ndarray, radius: float) -> np.ndarray:
    """argmin_{‖s‖ ≤ Δ} gᵀs + ½ sᵀBs (Moré & Sorensen 1983): μ ≥ max(0, −θ₁) with ‖(B + μI)⁻¹g‖ = Δ, by bisection."""
    theta, q = np.linalg.eigh(b)
    gamma = q.T @ g
    if theta[0] > 0 and np.linalg.norm(gamma / theta) <= radius:
        return -q @ (gamma / theta)
    lo = max(0.0, -theta[0])
    hi = lo + np.linalg.norm(g) / radius + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.linalg.norm(gamma / (theta + mid)) > radius else (lo, mid)
    return -q @ (gamma / (theta + hi))


def trust_region_reference(net: Net, curvature: Callable, solver: str, radius: float, steps: int, **kw):
    """Nocedal & Wright, Alg. 4.1: ρ < ¼ → Δ/4; ρ > ¾ on the boundary → min(2Δ, Δ_max); the step taken iff ρ > η."""
    w, out = flat(net.params), []
    for _ in range(steps):
        g, b = net.grad(w), curvature(w)
        if solver == "gltr":
            s = exact_subproblem_reference(b, g, radius)
        else:
            s = steihaug_reference(b, g, radius, kw["tol"], kw["maxiter"])
        rho = (net.loss(w + s) - net.loss(w)) / (g @ s + 0.5 * s @ b @ s)
        accepted = rho > kw["eta"]
        out.append((s if accepted else 0 * s, radius, rho, accepted))
        on_boundary = abs(np.linalg.norm(s) - radius) <= 1e-9 * radius
        if rho < 0.25:
            radius = 0.25 * radius
        elif rho > 0.75 and on_boundary:
            radius = min(2 * radius, kw["max_radius"])
        w = w + s if accepted else w
    return out


@pytest.mark.parametrize("solver, curvature", [("steihaug", "hessian"), ("gltr", "hessian"), ("gltr", "gauss_newton")])
def test_trust_region_over_steps_on_a_network(solver, curvature):
    net = Net(seed=5)
    kw = dict(max_radius=5.0, eta=0.1, tol=1e-10, maxiter=60)
    tx = trust_region(3.0, solver=solver, curvature=curvature, krylov_dim=40, **kw)
    got, diags = run(tx, net, 6)
    expected = trust_region_reference(
        net, {"hessian": net.hessian, "gauss_newton": net.ggn}[curvature], solver, 3.0, 6, **kw
    )
    radii = [e[1] for e in expected]
    changes = [b / a for a, b in zip(radii, radii[1:])]
    assert min(changes) < 1 < max(changes) and not all(e[3] for e in expected), "test premise: Δ shrinks, grows"
    np.testing.assert_allclose([d["radius"] for d in diags], radii, rtol=1e-12)
    assert [bool(d["accepted"]) for d in diags] == [bool(e[3]) for e in expected]
    np.testing.assert_allclose([d["rho"] for d in diags], [e[2] for e in expected], rtol=1e-8)
    assert_steps_close(got, [e[0] for e in expected], rtol=1e-10)
