"""The benchmark problem: MNIST + the suite's MLP, set up exactly as the trainer does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from second_order.optim import collect_diagnostics
from second_order.suite.model import MLP
from second_order.suite.training.step import loss_functions


class Problem:
    """MNIST + MLP as the trainer sets them up (same init and batch order for a seed)."""

    def __init__(self, data: Any, hidden: int, batch: int, num_classes: int, seed: int = 0):
        self.hidden, self.batch = hidden, batch
        self.model = MLP(hidden=(hidden,), num_classes=num_classes)
        self.apply_fn: Callable[..., Any] = self.model.apply
        self.x_all = jax.device_put(data.train_images)
        self.y_all = jax.device_put(data.train_labels)
        n_train = self.x_all.shape[0]
        self.steps_per_epoch = n_train // batch
        init_key, self.data_key = jax.random.split(jax.random.PRNGKey(seed))
        self.params = self.model.init(init_key, self.x_all[:1])["params"]
        self.n = int(sum(p.size for p in jax.tree_util.tree_leaves(self.params)))

    def perm(self, epoch: int = 0) -> jax.Array:
        """The trainer's batch indices of ``epoch``: (steps_per_epoch, batch)."""
        n_train = self.x_all.shape[0]
        return jax.random.permutation(jax.random.fold_in(self.data_key, epoch), n_train)[
            : self.steps_per_epoch * self.batch
        ].reshape(self.steps_per_epoch, self.batch)

    def batch_xy(self, epoch: int = 0, i: int = 0) -> tuple[jax.Array, jax.Array]:
        idx = self.perm(epoch)[i]
        return self.x_all[idx], self.y_all[idx]

    def fns(self, x: jax.Array, y: jax.Array) -> tuple[Callable, Callable, Callable]:
        """(value_fn, predict_fn, output_loss_fn) of the mini-batch (x, y), as the optimizers take them."""
        f = loss_functions(self.apply_fn, x, y)
        return f.value_fn, f.predict_fn, f.output_loss_fn

    def grad_fn(self) -> Callable:
        """(params, x, y) → (loss, gradient)."""
        return lambda p, x, y: jax.value_and_grad(self.fns(x, y)[0])(p)

    def step_fn(self, tx: optax.GradientTransformationExtraArgs) -> Callable:
        """One optimizer step as in the trainer: value_and_grad, tx.update, apply_updates."""

        def step(params, opt_state, x, y):
            fns = loss_functions(self.apply_fn, x, y)  # every extra argument the trainer passes
            loss, grads = jax.value_and_grad(fns.value_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params, **fns._asdict())
            return optax.apply_updates(params, updates), opt_state, loss, collect_diagnostics(opt_state)

        return step

    def diagnostic_names(self, tx: optax.GradientTransformationExtraArgs) -> set[str]:
        """The per-step diagnostics ``tx`` reports (from its state's shape; nothing is run)."""
        return set(collect_diagnostics(jax.eval_shape(tx.init, self.params)))


def diag_summary(diags: dict) -> dict:
    """Scalar diagnostics as JSON values (non-finite floats → None)."""
    out = {}
    for k, v in diags.items():
        v = np.asarray(v)
        if v.ndim == 0:
            out[k] = v.item() if np.isfinite(v) or v.dtype.kind == "i" else None
    return out
