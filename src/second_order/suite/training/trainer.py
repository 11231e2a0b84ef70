"""One trainer for every optimizer: jitted chunks of steps, honest time, durable logs.

The trainer knows nothing optimizer-specific.  Every optimizer is an optax
``GradientTransformationExtraArgs`` and is handed the same extra arguments for the
current mini-batch: ``value_fn`` (params → loss), ``predict_fn`` (params → logits)
and ``output_loss_fn`` (logits → loss).  Whatever diagnostics its state carries
(:func:`second_order.optim.collect_diagnostics`) are logged per step.

Hot loop: ``lax.scan`` over a chunk of ``chunk_steps`` steps, the whole dataset on
the device, batches gathered on the device from a per-epoch permutation derived
from the seed.  The optimizer clock runs only around the compiled chunk (after
ahead-of-time compilation and one discarded warm-up execution per chunk shape,
until ``block_until_ready``); compilation (with that warm-up), evaluation,
logging and checkpointing have their own clocks.  Each epoch has
``n_train // batch_size`` steps: the last partial batch (32 images at batch 64) is
dropped, and since every epoch reshuffles, no image is systematically left out.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from second_order.suite.training import checkpoint as ckpt
from second_order.suite.training.clock import Clock
from second_order.suite.model import accuracy, cross_entropy
from second_order.optim import collect_diagnostics
from second_order.suite.tracking.run_logger import RunLogger


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    max_steps: int | None = None
    max_time_s: float | None = None
    eval_every: int = 1
    chunk_steps: int = 100
    checkpoint_every_s: float = 300.0
    resume: bool = False
    progress: bool = True


@dataclasses.dataclass
class Outcome:
    """How the run ended: ``status`` is completed | diverged | interrupted | budget."""

    status: str
    steps: int
    epochs_completed: int
    diverged_step: int | None
    signal: int | None
    last_eval: dict[str, float]
    clock: dict[str, float]


def _make_chunk_fn(apply_fn: Callable, tx: optax.GradientTransformationExtraArgs) -> Callable:
    """(params, opt_state, X, Y, idx[K, B]) → (params, opt_state, losses[K], params_ok, diagnostics{[K]}).

    ``params_ok`` says whether the parameters after the chunk are all finite; a
    non-finite parameter makes every later loss non-finite, so per-step losses plus
    this one flag locate a divergence without a per-step reduction over parameters.
    """

    def chunk(params, opt_state, x_all, y_all, idx):
        def one_step(carry, batch_idx):
            params, opt_state = carry
            x, y = x_all[batch_idx], y_all[batch_idx]

            def predict_fn(p):
                return apply_fn({"params": p}, x)

            def output_loss_fn(logits):
                return cross_entropy(logits, y)

            def value_fn(p):
                return output_loss_fn(predict_fn(p))

            loss, grads = jax.value_and_grad(value_fn)(params)
            updates, opt_state = tx.update(
                grads, opt_state, params, value_fn=value_fn, predict_fn=predict_fn, output_loss_fn=output_loss_fn
            )
            params = optax.apply_updates(params, updates)
            return (params, opt_state), (loss, collect_diagnostics(opt_state))

        (params, opt_state), (losses, diags) = jax.lax.scan(one_step, (params, opt_state), idx)
        return params, opt_state, losses, _all_finite(params), diags

    # Donating params/opt_state lets XLA update them in place (unsupported on CPU).
    donate = (0, 1) if jax.default_backend() != "cpu" else ()
    return jax.jit(chunk, donate_argnums=donate)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _make_eval_fn(apply_fn: Callable) -> Callable:
    def evaluate(params, x, y):
        logits = apply_fn({"params": params}, x)
        return cross_entropy(logits, y), accuracy(logits, y)

    return jax.jit(evaluate)


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked between chunks (restored on exit)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(
    *,
    model: Any,
    tx: optax.GradientTransformationExtraArgs,
    data: Any,
    settings: TrainSettings,
    seed: int,
    run_dir: Path,
    logger: RunLogger,
) -> Outcome:
    """Train ``model`` with ``tx`` on ``data`` (arrays with train/test images and labels)."""
    clock = Clock()
    with clock.measure("setup"):
        x_train, y_train = jax.device_put(data.train_images), jax.device_put(data.train_labels)
        x_test, y_test = jax.device_put(data.test_images), jax.device_put(data.test_labels)
        n_train, batch = x_train.shape[0], settings.batch_size
        steps_per_epoch = n_train // batch
        total_steps = settings.epochs * steps_per_epoch
        if settings.max_steps is not None:
            total_steps = min(total_steps, settings.max_steps)
        init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(init_key, x_train[:1])["params"]
        opt_state = tx.init(params)
        step, meta = 0, {}
        if settings.resume and ckpt.exists(run_dir):
            params, opt_state, meta = ckpt.load(run_dir, params, opt_state)
            step = int(meta["step"])
            clock = Clock(meta["clock"])
            logger.truncate_after(step)
        chunk_fn = _make_chunk_fn(model.apply, tx)
        eval_fn = _make_eval_fn(model.apply)
    compiled: dict[int, Any] = {}
    last_eval: dict[str, float] = dict(meta.get("last_eval", {}))
    status, diverged_step = "completed", None
    last_ckpt = time.monotonic()
    perm_epoch, perm = -1, None
    bar = _progress(settings.progress, total_steps, step)

    def evaluate(epoch_done: int) -> None:
        with clock.measure("eval"):
            loss, acc = jax.device_get(eval_fn(params, x_test, y_test))
        last_eval.update(epoch=epoch_done, step=step, test_loss=float(loss), test_acc=float(acc))
        with clock.measure("log"):
            logger.log_eval(epoch_done, step, clock["train"], float(loss), float(acc))

    def save_checkpoint() -> None:
        with clock.measure("checkpoint"):
            logger.flush(durable=True)
            ckpt.save(run_dir, params, opt_state, {"step": step, "clock": clock.state(), "last_eval": last_eval})

    with _StopSignals() as signals:
        while step < total_steps:
            if settings.max_time_s is not None and clock["train"] >= settings.max_time_s:
                status = "budget"  # checked before a chunk too, so a resumed run keeps its budget
                break
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n_train)[
                    : steps_per_epoch * batch
                ].reshape(steps_per_epoch, batch)
                perm_epoch = epoch
            k = min(settings.chunk_steps - pos % settings.chunk_steps, steps_per_epoch - pos, total_steps - step)
            idx = perm[pos : pos + k]
            if k not in compiled:
                with clock.measure("compile"):
                    compiled[k] = chunk_fn.lower(params, opt_state, x_train, y_train, idx).compile()
                    # The first execution pays one-time costs (buffer allocation, thread pools):
                    # run it on copies and discard the result, so it stays off the time axis.
                    state_copy = jax.tree_util.tree_map(jnp.copy, (params, opt_state))
                    jax.block_until_ready(compiled[k](*state_copy, x_train, y_train, idx))
            t0 = clock["train"]
            with clock.measure("train"):
                out = compiled[k](params, opt_state, x_train, y_train, idx)
                out = jax.block_until_ready(out)
            params, opt_state, losses, params_ok, diags = out
            with clock.measure("log"):
                losses, params_ok, diags = jax.device_get((losses, params_ok, diags))
                ok = np.isfinite(losses)
                ok[-1] &= bool(params_ok)  # bad parameters after the last step of the chunk
                n_ok = k if ok.all() else int(np.argmin(ok)) + 1  # keep the first bad step's row
                times = t0 + (clock["train"] - t0) * np.arange(1, k + 1) / k
                logger.log_steps(step + np.arange(1, n_ok + 1), epoch, losses[:n_ok], times[:n_ok],
                                 {name: v[:n_ok] for name, v in diags.items()})
                bar.update(n_ok)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(losses[n_ok - 1]):.4f}", refresh=False)
            step += n_ok
            if not ok.all():
                status, diverged_step = "diverged", step
                break
            if step % steps_per_epoch == 0 and ((step // steps_per_epoch) % settings.eval_every == 0):
                evaluate(step // steps_per_epoch)
                save_checkpoint()
                last_ckpt = time.monotonic()
            elif time.monotonic() - last_ckpt > settings.checkpoint_every_s:
                save_checkpoint()
                last_ckpt = time.monotonic()
            if signals.received is not None:
                status = "interrupted"
                break
        bar.close()
        if status == "completed" and settings.max_steps is not None and step < settings.epochs * steps_per_epoch:
            status = "budget"
        if last_eval.get("step") != step and status != "diverged":
            evaluate(step // steps_per_epoch)
        if status != "diverged":
            save_checkpoint()
        logger.flush(durable=True)
    return Outcome(
        status=status,
        steps=step,
        epochs_completed=step // steps_per_epoch,
        diverged_step=diverged_step,
        signal=signals.received,
        last_eval=last_eval,
        clock=clock.state(),
    )


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=1.0)


def mean_last_epoch_loss(steps: Mapping[str, np.ndarray]) -> float:
    """Mean training loss over the last epoch that has rows (the summary's ``train_loss``)."""
    if not len(steps.get("train_loss", [])):
        return math.nan
    last = steps["epoch"] == steps["epoch"][-1]
    return float(np.mean(steps["train_loss"][last]))
