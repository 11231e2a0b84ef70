"""K-FAC for conv layers (KFC, Grosse & Martens 2016) against closed forms, in float64 under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from problems import Problem, dense_ggn_ref

from second_order.optim.kfac import kfac, kfac_layers
from second_order.optim.patches import conv_patches
from second_order.suite.model import CNN, apply_with_taps
from second_order.suite.training.step import loss_functions

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, padding="SAME", strides=(1, 1)):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=DN, precision=jax.lax.Precision.HIGHEST
    )


def loop_patches(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """Stride-1 patches by hand: ``[n, i, j] = xpad[n, i:i+k, j:j+k, :]`` flattened in (h, w, in) order."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, w, _ = xp.shape
    out = np.empty((n, h - k + 1, w - k + 1, k * k * x.shape[-1]))
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            out[:, i, j] = xp[:, i : i + k, j : j + k, :].reshape(n, -1)
    return out


@pytest.mark.parametrize(
    "window,kwargs",
    [
        ((3, 3), {}),
        ((3, 3), {"padding": "VALID"}),
        ((2, 3), {"strides": (2, 1), "padding": [(1, 0), (2, 1)]}),
        ((3, 3), {"kernel_dilation": 2, "strides": 2}),
    ],
)
def test_patches_times_the_reshaped_kernel_is_the_convolution(window, kwargs):
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    x = jax.random.normal(k[0], (2, 7, 6, 3), jnp.float64)
    kernel = jax.random.normal(k[1], (*window, 3, 4), jnp.float64)
    patches = conv_patches(x, window, **kwargs)
    strides = kwargs.get("strides", 1)
    expected = jax.lax.conv_general_dilated(
        x,
        kernel,
        (strides, strides) if isinstance(strides, int) else strides,
        kwargs.get("padding", "SAME"),
        rhs_dilation=(kwargs.get("kernel_dilation", 1),) * 2,
        dimension_numbers=DN,
    )
    np.testing.assert_allclose(patches @ kernel.reshape(-1, 4), expected, rtol=1e-12, atol=1e-12)


def test_patches_order_is_the_kernels_window_then_channel():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4, 3), jnp.float64))
    np.testing.assert_array_equal(conv_patches(jnp.asarray(x), (3, 3)), loop_patches(x, 3, 1))
    one_d = conv_patches(jnp.asarray(x[:, 0]), (2,), padding="VALID")  # (batch, width, in) → (batch, 3, 2·3)
    np.testing.assert_array_equal(one_d[:, 1], x[:, 0, 1:3].reshape(2, -1))


def conv_problem(batch: int, side: int, c_in: int, c_out: int, padding: str, seed: int, head=None):
    """One conv layer ``s = conv(x, W) + b`` (3×3, HWIO) and cross-entropy on ``head(s)``; Problem and tapped fn."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = {
        "Conv_0": {
            "kernel": 0.5 * jax.random.normal(k[0], (3, 3, c_in, c_out), jnp.float64),
            "bias": 0.1 * jax.random.normal(k[1], (c_out,), jnp.float64),
        }
    }
    x = jax.random.normal(k[2], (batch, side, side, c_in), jnp.float64)
    y = jax.random.randint(k[3], (batch,), 0, c_out)
    head = head or (lambda s: s.reshape(batch, -1))

    def tapped(p, taps):
        s = conv(x, p["Conv_0"]["kernel"], padding) + p["Conv_0"]["bias"]
        s = s if taps is None else s + taps["Conv_0"]
        return head(s), {"Conv_0": conv_patches(x, (3, 3), padding=padding)}

    predict = lambda p: tapped(p, None)[0]
    losses = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y)
    output_loss = lambda z: losses(z).mean()
    return Problem(params, predict, output_loss, lambda p: output_loss(predict(p))), tapped, x, losses


def run(tx, prob: Problem, tapped):
    fns = dict(value_fn=prob.value_fn, predict_fn=prob.predict_fn, output_loss_fn=prob.output_loss_fn)
    grads = jax.grad(prob.value_fn)(prob.params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **fns, tapped_predict_fn=tapped))
    return update(grads, tx.init(prob.params), prob.params)


def kfac_order(n_in: int, n_out: int) -> np.ndarray:
    """Indices into ravel_pytree's order (bias, then the kernel row-major) of vec([W; bᵀ]) row-major."""
    return np.concatenate([n_out + np.arange(n_in * n_out), np.arange(n_out)])


def test_one_example_one_location_factors_equal_gauss_newton_block():
    """3×3 'VALID' on a 3×3 image: one location, and with fisher="exact" A ⊗ G = Jᵀ H_z J exactly."""
    prob, tapped, x, _ = conv_problem(batch=1, side=3, c_in=2, c_out=3, padding="VALID", seed=2)
    _, state = run(kfac(1.0, 1.0, fisher="exact"), prob, tapped)
    a, g = state.factors["Conv_0"]
    a_bar = np.append(np.asarray(x[0]).reshape(-1), 1.0)  # the one patch, in (h, w, in) order
    np.testing.assert_allclose(a, np.outer(a_bar, a_bar), rtol=1e-13)
    order = kfac_order(18, 3)
    ggn = dense_ggn_ref(prob)[np.ix_(order, order)]
    np.testing.assert_allclose(np.kron(a, g), ggn, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("fisher", ["exact", "sampled"])
def test_one_by_one_conv_on_one_pixel_is_the_dense_layer(fisher):
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    batch, features, classes = 5, 4, 3
    w = jax.random.normal(k[0], (features, classes), jnp.float64)
    b = 0.1 * jax.random.normal(k[1], (classes,), jnp.float64)
    x = jax.random.normal(k[2], (batch, features), jnp.float64)
    y = jax.random.randint(k[3], (batch,), 0, classes)
    loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    def dense(p, taps):
        s = x @ p["layer"]["kernel"] + p["layer"]["bias"]
        return (s if taps is None else s + taps["layer"]), {"layer": x}

    image = x.reshape(batch, 1, 1, features)

    def one_by_one(p, taps):
        s = conv(image, p["layer"]["kernel"]) + p["layer"]["bias"]
        s = s if taps is None else s + taps["layer"]
        return s.reshape(batch, classes), {"layer": conv_patches(image, (1, 1))}

    results = []
    for tapped, kernel in ((dense, w), (one_by_one, w.reshape(1, 1, features, classes))):
        params = {"layer": {"kernel": kernel, "bias": b}}
        prob = Problem(params, lambda p, t=tapped: t(p, None)[0], loss, lambda p, t=tapped: loss(t(p, None)[0]))
        results.append(run(kfac(0.3, 0.05, fisher=fisher), prob, tapped))
    (u_dense, s_dense), (u_conv, s_conv) = results
    for f_dense, f_conv in zip(s_dense.factors["layer"], s_conv.factors["layer"], strict=True):
        np.testing.assert_allclose(f_conv, f_dense, rtol=1e-13)
    np.testing.assert_allclose(
        u_conv["layer"]["kernel"].reshape(features, classes), u_dense["layer"]["kernel"], rtol=1e-11
    )
    np.testing.assert_allclose(u_conv["layer"]["bias"], u_dense["layer"]["bias"], rtol=1e-11)


def test_factors_over_locations_and_the_step_are_the_dense_kronecker_solve():
    """Several locations, empirical Fisher, π = 1: A = (1/N) Σ_{n,t} ā āᵀ and G = mean_{n,t} δ δᵀ from
    patches built by hand; the update is −η (A + √λ I)⁻¹ ⊗ (G + √λ I)⁻¹ vec(∇W̄) with the Kronecker
    product formed explicitly (so the patch order must match the kernel's)."""
    batch, side, c_in, c_out = 3, 4, 2, 3
    readout = jax.random.normal(jax.random.PRNGKey(9), (c_out, 5), jnp.float64)
    head = lambda s: jnp.tanh(s).mean(axis=(1, 2)) @ readout  # (batch, 5 classes)
    prob, tapped, x, losses = conv_problem(batch, side, c_in, c_out, "SAME", seed=4, head=head)
    lr, lam = 0.4, 0.02
    upd, state = run(kfac(lr, lam, fisher="empirical", pi_adjusted=False), prob, tapped)

    patches = loop_patches(np.asarray(x), 3, 1).reshape(-1, 9 * c_in)
    a_bar = np.concatenate([patches, np.ones((len(patches), 1))], axis=1)
    a_ref = a_bar.T @ a_bar / batch
    p = prob.params["Conv_0"]
    s = conv(x, p["kernel"]) + p["bias"]
    delta = np.asarray(jax.grad(lambda s: losses(head(s)).sum())(s)).reshape(-1, c_out)  # δ_{n,t} = ∂ℓ_n/∂s_{n,t}
    g_ref = delta.T @ delta / (batch * side * side)
    a, g = state.factors["Conv_0"]
    np.testing.assert_allclose(a, a_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)

    grads = jax.grad(prob.value_fn)(prob.params)["Conv_0"]
    stacked = np.concatenate([np.asarray(grads["kernel"]).reshape(-1, c_out), np.asarray(grads["bias"])[None]])
    r = np.sqrt(lam)
    dense = np.kron(a_ref + r * np.eye(len(a_ref)), g_ref + r * np.eye(c_out))
    step = np.linalg.solve(dense, stacked.reshape(-1)).reshape(stacked.shape)
    np.testing.assert_allclose(upd["Conv_0"]["kernel"], -lr * step[:-1].reshape(3, 3, c_in, c_out), rtol=1e-10)
    np.testing.assert_allclose(upd["Conv_0"]["bias"], -lr * step[-1], rtol=1e-10)


def cnn_batch(seed: int, batch: int = 4):
    model = CNN(image_shape=(6, 6, 1), channels=(2, 3), hidden=(), num_classes=3)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k[0], (batch, 36), jnp.float64)
    y = jax.random.randint(k[1], (batch,), 0, 3)
    params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), model.init(k[2], x)["params"])
    return model, params, x, y


def test_suite_taps_give_conv_patches_and_preactivation_gradients():
    """On the suite's CNN: patches · W + b is each conv's output, and Σ_{n,t} patch ⊗ ∂L/∂tap its kernel gradient."""
    model, params, x, y = cnn_batch(seed=5)
    fns = loss_functions(model.apply, x, y)
    z, inputs = fns.tapped_predict_fn(params, None)
    np.testing.assert_allclose(z, fns.predict_fn(params), rtol=1e-14)
    assert {p for (p,) in kfac_layers(params)} == set(inputs) == {"Conv_0", "Conv_1", "Dense_0"}
    assert inputs["Conv_0"].shape == (4, 6, 6, 9) and inputs["Conv_1"].shape == (4, 3, 3, 18)
    c0 = params["Conv_0"]
    expected = conv(x.reshape(4, 6, 6, 1), c0["kernel"]) + c0["bias"]
    np.testing.assert_allclose(inputs["Conv_0"] @ c0["kernel"].reshape(-1, 2) + c0["bias"], expected, rtol=1e-12)
    taps = jax.tree_util.tree_map(lambda a, p: jnp.zeros((*a.shape[:-1], p["kernel"].shape[-1])), inputs, params)
    tap_grads = jax.jit(jax.grad(lambda t: fns.output_loss_fn(fns.tapped_predict_fn(params, t)[0])))(taps)
    grads = jax.grad(fns.value_fn)(params)
    for name in ("Conv_0", "Conv_1"):
        a = inputs[name].reshape(-1, inputs[name].shape[-1])
        t = tap_grads[name].reshape(-1, tap_grads[name].shape[-1])
        np.testing.assert_allclose((a.T @ t).reshape(grads[name]["kernel"].shape), grads[name]["kernel"], rtol=1e-10)
        np.testing.assert_allclose(t.sum(0), grads[name]["bias"], rtol=1e-10, atol=1e-16)
    assert apply_with_taps(model.apply, {"params": params}, x, None)[1].keys() == inputs.keys()


def test_kfac_step_on_the_cnn_has_the_scale_of_the_gauss_newton_step():
    """With the sum over locations in A, the KFC step is close to (GGN + λ I)⁻¹ g of the whole CNN (n = 161).

    Means over locations in both factors (no scale T) would make the conv layers' steps T = 36 and 9 times
    larger.
    """
    model, params, x, y = cnn_batch(seed=6, batch=16)
    fns = loss_functions(model.apply, x, y)
    flat, unravel = ravel_pytree(params)
    z = fns.predict_fn(params)
    jac = jax.jit(jax.jacobian(lambda w: fns.predict_fn(unravel(w))))(flat).reshape(z.size, -1)
    ggn = jac.T @ jax.jit(jax.hessian(fns.output_loss_fn))(z).reshape(z.size, z.size) @ jac
    g = ravel_pytree(jax.jit(jax.grad(fns.value_fn))(params))[0]
    lam = 1.0
    exact = np.linalg.solve(ggn + lam * np.eye(len(g)), g)
    tx = kfac(1.0, lam, fisher="exact")
    upd, _ = jax.jit(lambda p, s: tx.update(jax.grad(fns.value_fn)(p), s, p, **fns._asdict()))(params, tx.init(params))
    step = -np.asarray(ravel_pytree(upd)[0])
    assert step @ exact / (np.linalg.norm(step) * np.linalg.norm(exact)) > 0.9
    assert 0.5 < np.linalg.norm(step) / np.linalg.norm(exact) < 2


def test_kfac_trains_the_cnn():
    model, params, x, y = cnn_batch(seed=6, batch=16)
    fns = loss_functions(model.apply, x, y)
    tx = kfac(0.3, 0.1)
    state = tx.init(params)
    assert state.factors["Conv_1"][0].shape == (19, 19) and state.factors["Conv_1"][1].shape == (3, 3)

    @jax.jit
    def step(p, s):
        f = loss_functions(model.apply, x, y)
        u, s = tx.update(jax.grad(f.value_fn)(p), s, p, **f._asdict())
        return optax.apply_updates(p, u), s

    loss0 = float(fns.value_fn(params))
    for _ in range(10):
        params, state = step(params, state)
    assert float(fns.value_fn(params)) < 0.8 * loss0
    assert all(np.all(np.isfinite(f)) for pair in state.factors.values() for f in pair)
