"""One trainer for every optimizer: jitted chunks of steps, an honest clock, durable logs.

``fit`` is a loop over chunks: the :class:`~.sampler.EpochSampler` says which
batches come next, :class:`TimedChunks` runs them (compiled ahead of time, one
discarded warm-up per chunk shape, the optimizer clock stopped after
``block_until_ready``), the :class:`~.stop.StopPolicy` and
:class:`~.stop.StopSignals` say when to stop, and :mod:`.checkpoint` commits the
state after each evaluation, every ``checkpoint_every_s`` and on stop.  The step
itself and the optimizer contract are in :mod:`.step`.  Compilation (with the
warm-up), evaluation, in-loop measurements (:mod:`.probe`), logging and
checkpointing have their own clocks.  Data, parameters and optimizer state live on a
one-axis device mesh (:mod:`.devices`, ``trainer.devices``): replicated, with each
batch split over the devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from second_order.curvature import tree_cast
from second_order.suite.config import TrainerConfig
from second_order.suite.tracking.run_logger import NullLogger, RunLogger
from second_order.suite.tracking.runs import STEPS_FILE, read_table
from second_order.suite.training import checkpoint as ckpt
from second_order.suite.training import schedule
from second_order.suite.training.clock import Clock
from second_order.suite.training.devices import Placement, select_devices
from second_order.suite.training.probe import PROBE_STREAM, TimedProbe
from second_order.suite.training.resources import check_fits
from second_order.suite.training.sampler import EpochSampler
from second_order.suite.training.step import make_chunk_fn, make_eval_fn
from second_order.suite.training.stop import StopPolicy, StopSignals, finite_prefix


@dataclasses.dataclass
class Outcome:
    """How the run ended: ``status`` is completed | diverged | interrupted | budget."""

    status: str
    start_step: int
    steps: int
    steps_per_epoch: int
    epochs_completed: int
    diverged_step: int | None
    signal: int | None
    last_eval: dict[str, float]
    clock: dict[str, float]


class TimedChunks:
    """Runs compiled chunks with compilation and warm-up off the optimizer clock."""

    def __init__(self, chunk_fn: Any, clock: Clock, placement: Placement):
        self.chunk_fn, self.clock, self.placement = chunk_fn, clock, placement
        self.compiled: dict[int, Any] = {}
        self.signals: StopSignals | None = None  # a stop requested during compilation skips the warm-up

    def __call__(self, params: Any, opt_state: Any, x: jax.Array, y: jax.Array, idx: jax.Array) -> Any | None:
        k = int(idx.shape[0])
        if k not in self.compiled:
            with self.clock.measure("compile"):
                compiled = self.chunk_fn.lower(params, opt_state, x, y, idx).compile()
                check_fits(compiled, self.placement.devices[0], sum(p.size for p in jax.tree_util.tree_leaves(params)))
                if self.signals is not None and agreed_signal(self.signals, self.placement):
                    return None
                self.compiled[k] = compiled
                # The first execution pays one-time costs (buffers, thread pools): run it on
                # copies and discard the result, so that it stays off the time axis.
                # (a device-side copy: no compilation of its own)
                copies = jax.device_put((params, opt_state), self.placement.replicated, may_alias=False)
                jax.block_until_ready(self.compiled[k](*copies, x, y, idx))
        with self.clock.measure("train"):
            return jax.block_until_ready(self.compiled[k](params, opt_state, x, y, idx))


def initial_state(
    model: Any, tx: optax.GradientTransformation, key: jax.Array, sample: np.ndarray, param_dtype: str
) -> tuple[Any, Any]:
    """The model's parameters (cast to ``param_dtype``) and ``tx.init`` of them, in one compiled call.

    Bit for bit what the same calls give eagerly, where each operation would be compiled on its
    own (about 45 small compilations for K-FAC, about a second of a run's start-up on 2 cores).
    """

    def init(key: jax.Array, sample: jax.Array) -> tuple[Any, Any]:
        params = tree_cast(model.init(key, sample)["params"], jnp.dtype(param_dtype))
        return params, tx.init(params)

    return jax.jit(init)(key, sample)


def fit(
    *,
    model: Any,
    tx: optax.GradientTransformationExtraArgs,
    data: Any,
    settings: TrainerConfig,
    seed: int,
    run_dir: Path,
    logger: RunLogger | NullLogger,
    param_dtype: str = "float32",
    signals: StopSignals | None = None,
    probe: tuple[Any, int] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    placement: Placement | None = None,
) -> Outcome:
    """Train ``model`` with ``tx`` on ``data`` (train/test images and labels) into ``run_dir``.

    Parameters are initialised by the model (float32) and then cast to ``param_dtype``;
    float64 reproduces the paper's exact Newton, whose float32 parameters became
    float64 after its first step.  ``signals``: handlers the caller installed earlier
    (so that a signal during data loading stops the run too); default: installed here.
    ``probe``: ``(fn, every_steps)``, a jitted measurement ``(params, X, Y, batch_idx,
    key) → {column: scalar}`` (e.g. :func:`second_order.suite.spectrum.make_curvature_probe`)
    taken at step 0, every ``every_steps`` steps of each epoch and at the end, on the
    batch of the next step, and logged with ``logger.log_curvature``.
    ``validation``: held-out ``(images, labels)`` evaluated with the test set at every
    evaluation (``val_loss``, ``val_acc``); evaluations happen every ``eval_every``
    epochs and, with ``eval_every_steps``, every that many steps of each epoch.
    ``placement``: the device mesh (:mod:`.devices`; default: ``settings.devices`` of
    every process); the data and the state are replicated on it, each batch split over
    it.  Only its primary process writes checkpoints.
    """
    clock = Clock()
    with clock.measure("setup"):
        place = placement or Placement.over(select_devices(settings.devices))
        x_train, y_train = place.replicate((data.train_images, data.train_labels))
        x_test, y_test = place.replicate((data.test_images, data.test_labels))
        held_out = None if validation is None else place.replicate(validation)
        init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
        sampler = EpochSampler(data_key, int(x_train.shape[0]), settings.batch_size)
        per_epoch = sampler.steps_per_epoch
        last_step = settings.epochs * per_epoch
        if settings.max_steps is not None:
            last_step = min(last_step, settings.max_steps)
        policy = StopPolicy(last_step, settings.max_time_s)
        params, opt_state = initial_state(model, tx, init_key, np.asarray(data.train_images[:1]), param_dtype)
        step, meta = 0, dict[str, Any]()
        if settings.resume and ckpt.exists(run_dir):
            params, opt_state, meta = ckpt.load(run_dir, params, opt_state)
            step = int(meta["step"])
            clock = Clock(meta["clock"])
        elif place.primary:
            if settings.resume and read_table(Path(run_dir) / STEPS_FILE).get("step", np.empty(0)).size:
                # a resume that finds rows but no checkpoint drops them: say so
                logging.getLogger(__name__).warning("%s has no checkpoint: the run starts from step 0", run_dir)
            ckpt.clear(run_dir)  # a fresh start: nothing older may ever be resumed
        place.check_same(step, "the step to start from")
        params, opt_state = place.replicate((params, opt_state))
        if meta:
            meta = _forget_budget_end(meta, step, policy.last_step, per_epoch, settings, probe)
            # Rows past the checkpoint are redone, and so are its step's evaluation and
            # measurement when they were logged after it (the run ended right after that checkpoint).
            logger.truncate_after(
                step,
                evals_upto=step if meta.get("last_eval", {}).get("step") == step else step - 1,
                curvature_upto=step if meta.get("measured_step") == step else step - 1,
            )
        else:
            logger.truncate_after(-1)  # a fresh start: no row survives, the step-0 measurement included
        run_chunk = TimedChunks(make_chunk_fn(model.apply, tx, place), clock, place)
        eval_fn = make_eval_fn(model.apply, place)
        measurer = TimedProbe(probe[0], probe[1], clock) if probe is not None else None
        probe_key = jax.random.fold_in(jax.random.PRNGKey(seed), PROBE_STREAM)
    start_step = step
    measured_step: int | None = meta.get("measured_step")
    last_eval: dict[str, float] = dict(meta.get("last_eval", {}))
    status, diverged_step = "completed", None
    last_ckpt = time.monotonic()
    bar = _progress(settings.progress, last_step, step)

    def evaluate() -> None:
        with clock.measure("eval"):
            loss, acc = map(float, jax.device_get(eval_fn(params, x_test, y_test)))
            val = None
            if held_out is not None:
                val_loss, val_acc = map(float, jax.device_get(eval_fn(params, *held_out)))
                val = (val_loss, val_acc)
        epoch = step // per_epoch
        last_eval.update(epoch=epoch, step=step, test_loss=loss, test_acc=acc)
        if val is not None:
            last_eval.update(val_loss=val[0], val_acc=val[1])
        with clock.measure("log"):
            logger.log_eval(epoch, step, clock["train"], loss, acc, validation=val)

    def measure() -> None:
        """The probe at the current parameters, on the batch of the next step."""
        nonlocal measured_step
        if measurer is None or measured_step == step:
            return
        batch = place.replicate(sampler.chunk(step, 1, step + 1)[0])
        key = place.replicate(jax.random.fold_in(probe_key, step))
        values, seconds = measurer(params, x_train, y_train, batch, key)
        with clock.measure("log"):
            logger.log_curvature(step, step // per_epoch, clock["train"], seconds, values)
        measured_step = step

    def save_checkpoint() -> None:
        if not place.primary:
            return
        meta = {"step": step, "clock": clock.state(), "last_eval": last_eval, "measured_step": measured_step}
        with clock.measure("checkpoint"):
            logger.flush(durable=True)
            ckpt.save(run_dir, params, opt_state, meta)

    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)  # also on an error, so that its message starts a line of its own
        if signals is None:
            signals = stack.enter_context(StopSignals())
        run_chunk.signals = signals
        while step < policy.last_step:
            if agreed_signal(signals, place):  # also a signal during set-up or compilation
                status = "interrupted"
                break
            if place.any_process(policy.out_of_time(clock["train"])):
                status = "budget"  # checked before a chunk too, so a resumed run keeps its budget
                break
            if measurer is not None and measurer.due(step, per_epoch):
                measure()  # at step 0, or a resumed run's first step when its measurement was lost
            cap = policy.last_step if measurer is None else min(policy.last_step, measurer.next_due(step, per_epoch))
            if settings.eval_every_steps is not None:
                cap = min(cap, schedule.next_due(step, per_epoch, settings.eval_every_steps))
            idx = place.replicate(sampler.chunk(step, settings.chunk_steps, cap))
            t0 = clock["train"]
            out = run_chunk(params, opt_state, x_train, y_train, idx)
            if out is None:  # stopped between compilation and the first execution
                status = "interrupted"
                break
            params, opt_state, losses, params_ok, diags = out
            with clock.measure("log"):
                losses, params_ok, diags = jax.device_get((losses, params_ok, diags))
                k = len(losses)
                n_ok = finite_prefix(losses, bool(params_ok))
                times = t0 + (clock["train"] - t0) * np.arange(1, k + 1) / k
                logger.log_steps(
                    step + np.arange(1, n_ok + 1),
                    step // per_epoch,
                    losses[:n_ok],
                    times[:n_ok],
                    {name: v[:n_ok] for name, v in diags.items()},
                )
                bar.update(n_ok)
                bar.set_postfix(epoch=step // per_epoch + 1, loss=f"{float(losses[n_ok - 1]):.4f}", refresh=False)
            step += n_ok
            if not (bool(params_ok) and np.isfinite(losses).all()):
                status, diverged_step = "diverged", step
                # One truth for the time axis and the summary: the run ends at the diverging step.
                clock.totals["train"] = float(times[n_ok - 1])
                break
            if measurer is not None and measurer.due(step, per_epoch) and not agreed_signal(signals, place):
                measure()  # before the checkpoint, so a resume never measures a step twice
            if epoch_eval_due(step, per_epoch, settings):
                evaluate()
                save_checkpoint()
                last_ckpt = time.monotonic()
                continue
            if step_eval_due(step, per_epoch, settings):
                evaluate()  # within an epoch: no checkpoint (a resume redoes the rows after the last one)
            if time.monotonic() - last_ckpt > settings.checkpoint_every_s:
                save_checkpoint()
                last_ckpt = time.monotonic()
        bar.close()
        if status == "completed" and step < settings.epochs * per_epoch:
            status = "budget"
        # A finished run ends with an evaluation of its final parameters; an interrupted
        # one does not (a resumed run must log exactly what an uninterrupted one logs).
        if status in ("completed", "budget") and last_eval.get("step") != step:
            evaluate()
        if status in ("completed", "budget"):
            measure()
        if status != "diverged":
            save_checkpoint()
        logger.flush(durable=True)
    return Outcome(
        status=status,
        start_step=start_step,
        steps=step,
        steps_per_epoch=per_epoch,
        epochs_completed=step // per_epoch,
        diverged_step=diverged_step,
        signal=signals.received if signals is not None else None,
        last_eval=last_eval,
        clock=clock.state(),
    )


def epoch_eval_due(step: int, per_epoch: int, settings: TrainerConfig) -> bool:
    """Whether ``step`` ends an epoch that is evaluated (every ``eval_every`` epochs; then a checkpoint)."""
    return step % per_epoch == 0 and (step // per_epoch) % settings.eval_every == 0


def step_eval_due(step: int, per_epoch: int, settings: TrainerConfig) -> bool:
    """Whether ``step`` is one of the within-epoch evaluations of ``eval_every_steps``."""
    return settings.eval_every_steps is not None and schedule.due(step, per_epoch, settings.eval_every_steps)


def _forget_budget_end(
    meta: dict[str, Any],
    step: int,
    last_step: int,
    per_epoch: int,
    settings: TrainerConfig,
    probe: tuple[Any, int] | None,
) -> dict[str, Any]:
    """``meta`` without the evaluation and measurement a spent budget added at ``step``.

    A run that stopped on ``max_steps``/``max_time_s`` mid-schedule evaluated and measured
    its final parameters there; resumed with a larger budget it goes on past ``step``,
    where an uninterrupted run logs neither, so both are forgotten (and their rows dropped).
    """
    if step >= last_step:
        return meta
    out = dict(meta)
    eval_due = epoch_eval_due(step, per_epoch, settings) or step_eval_due(step, per_epoch, settings)
    if not eval_due and out.get("last_eval", {}).get("step") == step:
        out["last_eval"] = {}
    if probe is not None and not schedule.due(step, per_epoch, probe[1]) and out.get("measured_step") == step:
        out["measured_step"] = None
    return out


def agreed_signal(signals: StopSignals, place: Placement) -> int | None:
    """The stop signal any process received (a collective); recorded as this process's too.

    A signal to one task of a multi-process run stops every task at the same step.
    """
    received = place.max_over_processes(signals.received or 0)
    if received:
        signals.received = received
    return received or None


def _progress(enabled: bool, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=1.0)


def mean_last_epoch_loss(steps: Mapping[str, np.ndarray]) -> float:
    """Mean training loss over the last epoch that has rows (the summary's ``train_loss``)."""
    if not len(steps.get("train_loss", [])):
        return math.nan
    last = steps["epoch"] == steps["epoch"][-1]
    return float(np.mean(steps["train_loss"][last]))
