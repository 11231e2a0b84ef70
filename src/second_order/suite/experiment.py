"""One experiment run: validated config → data, model, optimizer → trainer → run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import yaml

from second_order.optim import collect_diagnostics
from second_order.suite.config import ConfigError, ValidConfig, validate
from second_order.suite.model import build_model, describe_model, image_shape_of
from second_order.suite.optimizer_config import build_optimizer, init_state_shapes
from second_order.suite.splits import hold_out
from second_order.suite.tracking import environment, runs
from second_order.suite.tracking.run_logger import NullLogger, RunLogger
from second_order.suite.training import checkpoint
from second_order.suite.training.devices import Placement, describe, gpu_fallback_warning, select_devices
from second_order.suite.training.resources import RunDirLock
from second_order.suite.training.stop import StopSignals, budget_spent, resumes_by_itself
from second_order.suite.training.trainer import fit, mean_last_epoch_loss

#: Keys that may differ when a run is resumed: budgets and bookkeeping, never the experiment.
RESUMABLE_KEYS = (
    "trainer.resume",
    "trainer.progress",
    "trainer.max_steps",
    "trainer.max_time_s",
    "trainer.chunk_steps",
    "trainer.checkpoint_every_s",
    "trainer.devices",  # where it runs (equal losses on any number of devices), not what
    "optimizer.max_params",  # a guard against too large a model, not part of the experiment
    "data.dir",
    "logger.wandb.mode",
    "logger.wandb.project",
    "logger.wandb.entity",
    "logger.wandb.tags",
    "logger.wandb.init_timeout_s",
)


def prepare(cfg: Mapping[str, Any]) -> tuple[ValidConfig, optax.GradientTransformationExtraArgs]:
    """Validate everything that can be checked without data; raise ConfigError otherwise."""
    rc = validate(cfg)
    jax.config.update("jax_enable_x64", rc.x64)
    return rc, build_optimizer(rc.optimizer)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs, budgets and bookkeeping aside."""
    # a key added to the schema after the old run was written: it ran with the default
    a, b = runs.flatten_with_defaults(_plain(old)), runs.flatten_config(_plain(new))
    return sorted(
        k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>") and not k.startswith(RESUMABLE_KEYS)
    )


class RunDirTaken(ConfigError):
    """``run_dir`` holds a run this one may not continue (another configuration, or no resume asked)."""


def check_run_dir(run_dir: Path, cfg: Mapping[str, Any], resume: bool) -> None:
    """Refuse to mix a new run, or a run of another configuration, into ``run_dir`` (:class:`RunDirTaken`)."""
    summary, config = run_dir / runs.SUMMARY_FILE, run_dir / runs.CONFIG_FILE
    differing: list[str] = []
    if config.exists():
        try:
            differing = config_differences(yaml.safe_load(config.read_text()) or {}, cfg)
        except yaml.YAMLError:
            raise ConfigError(
                f"{config} is unreadable; start the run in a new directory (hydra.run.dir=<dir>)"
            ) from None
    if differing:
        shown = ", ".join(differing[:6]) + (" ..." if len(differing) > 6 else "")
        raise RunDirTaken(
            f"run directory {run_dir} holds a run with another configuration (differs in: {shown}); "
            "start this one elsewhere with hydra.run.dir=<dir>"
        )
    if resume or not summary.exists():
        return
    status = (runs.read_summary(run_dir) or {"status": "unreadable summary"}).get("status", "unknown")
    if status in ("completed", "diverged"):
        fix = "it has ended (results in its summary.json; trainer.resume=true accepts it as it is, nothing is rerun)"
    else:
        fix = "continue it with trainer.resume=true"
    raise RunDirTaken(
        f"run directory {run_dir} already holds this run (status: {status}); {fix}, or start a new one "
        "elsewhere with hydra.run.dir=<dir>"
    )


def run(cfg: Mapping[str, Any], run_dir: Path | str, on_accept: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Run one experiment into ``run_dir`` and return its summary (also in summary.json).

    Before any work: the config is validated, the run directory created and locked
    (a second run into it is refused while this one lives), checked against the run
    it may hold, and SIGINT/SIGTERM/pre-emption handlers installed (a signal from then
    on ends in a clean ``interrupted`` record). ``on_accept(run_dir)`` runs once the
    directory is this run's (locked and checked), before training: where a launcher
    records its invocation (``scripts/train.py``: Hydra's ``.hydra/``), so that a refused
    job never rewrites the record of the run it found. A pre-empted run resumes by itself when
    its job is requeued with the same command (see ``stop.resumes_by_itself``).

    The run uses ``trainer.devices`` devices of every process (:mod:`.training.devices`).
    In a multi-process job every process calls this; only process 0 locks, checks and
    writes the run directory, the others train alongside and return ``{}``.
    """
    run_dir = Path(run_dir)
    rc, tx = prepare(cfg)
    placement = Placement.over(select_devices(rc.trainer.devices))
    if not placement.primary:
        with StopSignals() as signals:
            rc = _resuming(rc, placement.any_process(rc.trainer.resume))  # process 0's decision
            return _run_locked(cfg, rc, tx, run_dir, signals, placement)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is an existing file; choose another with hydra.run.dir=<dir>")
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunDirLock(run_dir), StopSignals() as signals:
        resume = rc.trainer.resume
        if not resume and resumes_by_itself(runs.read_summary(run_dir)):
            how = "from its checkpoint" if checkpoint.exists(run_dir) else "from the start (no checkpoint yet)"
            logging.getLogger(__name__).info("%s was pre-empted or requeued: resuming it %s", run_dir, how)
            resume = True  # without a checkpoint the trainer starts afresh and drops the old rows
        rc = _resuming(rc, placement.any_process(resume))
        check_run_dir(run_dir, cfg, rc.trainer.resume)
        if on_accept is not None:
            on_accept(run_dir)
        return _run_locked(cfg, rc, tx, run_dir, signals, placement)


def _resuming(rc: ValidConfig, resume: bool) -> ValidConfig:
    return dataclasses.replace(rc, trainer=dataclasses.replace(rc.trainer, resume=resume))


def check_data(rc: ValidConfig, data: Any) -> None:
    """What the config must agree with in the data: validation split, batch size, number of classes."""
    n_train = len(data.train_labels)
    if n_train == 0:
        raise ConfigError("the training set is empty; check data.dir")
    held = rc.data.validation_examples
    if held and held >= n_train:
        raise ConfigError(
            f"data.validation_examples = {held} is invalid: must be less than the {n_train} training examples"
        )
    n_train -= held
    if rc.trainer.batch_size > n_train:
        raise ConfigError(
            f"trainer.batch_size = {rc.trainer.batch_size} is invalid: must be at most the {n_train} training examples"
        )
    classes = int(max(np.max(data.train_labels), np.max(data.test_labels, initial=0))) + 1
    if rc.model.num_classes < classes:
        raise ConfigError(
            f"model.num_classes = {rc.model.num_classes} is invalid: must be at least {classes}, "
            "the number of classes in the data"
        )


def _run_locked(
    cfg: Mapping[str, Any],
    rc: ValidConfig,
    tx: optax.GradientTransformationExtraArgs,
    run_dir: Path,
    signals: StopSignals,
    placement: Placement,
) -> dict[str, Any]:
    from second_order.suite.data import load_dataset  # here: config errors surface before any data I/O

    primary = placement.primary  # the only process that writes files
    device_warning = gpu_fallback_warning()
    if device_warning and primary:
        logging.getLogger(__name__).warning("%s", device_warning)
        warnings.warn(device_warning, RuntimeWarning, stacklevel=2)

    data = load_dataset(rc.data.name, rc.data.dir, verify_checksums=rc.data.verify_checksums)
    check_data(rc, data)
    data, validation = hold_out(data, rc.data.validation_examples)
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    resuming = rc.trainer.resume and checkpoint.exists(run_dir)
    previous = (runs.read_summary(run_dir) or {}) if resuming else {}
    per_epoch = n_train // rc.trainer.batch_size
    start = checkpoint.latest_step(run_dir) if resuming else 0
    if placement.any_process(resuming and budget_spent(previous, rc.trainer, start, per_epoch)):
        if primary:
            logging.getLogger(__name__).info(
                "%s ended on its budget at step %d and this one is no larger: left as it is "
                "(a larger trainer.max_steps or trainer.max_time_s goes on)",
                run_dir,
                start,
            )
        return dict(previous) if primary else {}
    if primary and not (run_dir / runs.CONFIG_FILE).exists():
        runs.write_text(run_dir / runs.CONFIG_FILE, yaml.safe_dump(_plain(cfg), sort_keys=False))

    image_shape = image_shape_of(data)
    model = build_model(rc.model, image_shape)
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.train_images[:1])["params"]
    abstract_params = jax.tree_util.tree_map(
        lambda p: jax.ShapeDtypeStruct(p.shape, rc.model.param_dtype), abstract_params
    )
    diag_names = list(collect_diagnostics(init_state_shapes(rc.optimizer, tx, abstract_params)))
    probe, curvature_names, wandb_curvature = curvature_probe(rc, model, abstract_params)
    logged = _wandb_logged(rc, run_dir) if primary and resuming else None  # read before W&B adds a segment
    wandb = _wandb_logger(rc, run_dir, cfg, previous.get("wandb_run_id")) if primary else None
    logger = (
        RunLogger(run_dir, diag_names, wandb, curvature_names, validation is not None, wandb_curvature, logged)
        if primary
        else NullLogger()
    )
    base = {
        "optimizer": rc.optimizer.name,
        "experiment": rc.experiment_name,
        "seed": rc.seed,
        "param_count": int(sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(abstract_params))),
        "wandb_run_id": getattr(wandb, "run_id", None),
        "dataset": data.name,
        "model": describe_model(rc.model, image_shape),
        "train_examples": n_train,
        "validation_examples": rc.data.validation_examples,
        "test_examples": n_test,
        "batch_size": rc.trainer.batch_size,
        "epochs": rc.trainer.epochs,
        "steps_per_epoch": per_epoch,
        "protocol_steps": rc.trainer.epochs * per_epoch,
        "max_steps": rc.trainer.max_steps,  # config.yaml keeps the first segment's budgets
        "max_time_s": rc.trainer.max_time_s,
        "x64": rc.x64,
        **describe(placement),
        "device_warning": device_warning,
    }
    train = functools.partial(
        fit,
        model=model,
        tx=tx,
        data=data,
        settings=rc.trainer,
        seed=rc.seed,
        run_dir=run_dir,
        logger=logger,
        param_dtype=rc.model.param_dtype,
        signals=signals,
        probe=probe,
        validation=validation,
        placement=placement,
    )
    if not primary:
        train()
        return {}
    record = environment.record()
    environment.append_segment(run_dir / runs.ENV_FILE, record, start)
    # Earlier segments, cut at the checkpoint this one continues from (later rows are redone);
    # a segment killed before it could record its end (end_step null) ended there too.
    segments = [
        {**s, "end_step": start if s.get("end_step") is None else min(int(s["end_step"]), start)}
        for s in previous.get("segments") or []
        if int(s.get("start_step", 0)) < start
    ]
    this_segment = environment.new_segment(start, record, describe(placement))
    segments.append(this_segment)
    # While running, the record holds no results: the last segment's would disagree with the files.
    runs.write_json(run_dir / runs.SUMMARY_FILE, {**base, "status": "running", "segments": segments})
    try:
        outcome = train()
    except BaseException as err:
        # Never leave "running" behind: a resume that fails before it checkpoints anything new
        # (an unreadable checkpoint, a crash in compilation) restores the record it found; any
        # other failure (a crash, out of memory, a signal before the loop) says so, with the
        # segments up to the last checkpoint, from which a resume would go on.
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reached = start
        with contextlib.suppress(OSError):
            reached = checkpoint.latest_step(run_dir)
        environment.end_segment(this_segment, reached)
        failed = {"status": "failed", "error": f"{type(err).__name__}: {message}", "segments": segments}
        kept = previous if previous and reached <= start else {**base, **failed}
        with contextlib.suppress(OSError):  # e.g. a full disk: the original error is what matters
            runs.write_json(run_dir / runs.SUMMARY_FILE, kept)
        raise
    finally:
        logger.close()
    environment.end_segment(this_segment, outcome.steps)
    steps = runs.read_table(run_dir / runs.STEPS_FILE)
    summary = {
        **base,
        "status": outcome.status,
        "train_loss": mean_last_epoch_loss(steps),
        "test_loss": outcome.last_eval.get("test_loss"),
        "test_acc": outcome.last_eval.get("test_acc"),
        "val_loss": outcome.last_eval.get("val_loss"),
        "val_acc": outcome.last_eval.get("val_acc"),
        "steps": outcome.steps,
        "epochs_completed": outcome.epochs_completed,
        "train_time_s": outcome.clock.get("train", 0.0),
        "compile_time_s": outcome.clock.get("compile", 0.0),
        "eval_time_s": outcome.clock.get("eval", 0.0),
        "log_time_s": outcome.clock.get("log", 0.0),
        "checkpoint_time_s": outcome.clock.get("checkpoint", 0.0),
        **_curvature_summary(run_dir, outcome.clock, probe is not None),
        "diverged": outcome.status == "diverged",
        "diverged_step": outcome.diverged_step,
        **objective(outcome, steps),
        "signal": outcome.signal,
        "segments": segments,
    }
    runs.write_json(run_dir / runs.SUMMARY_FILE, summary)
    if wandb is not None:
        wandb.set_summary(summary)
        wandb.finish(exit_code=0 if outcome.status in ("completed", "budget", "diverged") else 1)
    return summary


def objective(outcome: Any, steps: Mapping[str, Any]) -> dict[str, Any]:
    """What a sweeper minimises: the final validation loss (never the test set), else the final training loss.

    ``inf`` for a diverged run (Optuna records it; NaN would mark the trial failed).
    """
    if outcome.status == "diverged":
        value, name = float("inf"), "val_loss" if "val_loss" in outcome.last_eval else "train_loss"
    elif "val_loss" in outcome.last_eval:
        value, name = float(outcome.last_eval["val_loss"]), "val_loss"
    else:
        value, name = mean_last_epoch_loss(steps), "train_loss"
    return {"objective": value, "objective_metric": name}


def curvature_probe(
    rc: ValidConfig, model: Any, abstract_params: Any
) -> tuple[tuple[Any, int] | None, list[str], list[str]]:
    """``diagnostics=curvature``: the trainer's probe ``(fn, every_steps)``, the columns of curvature.csv
    and those of them W&B receives (the scalar summaries, not the SLQ nodes and weights)."""
    d = rc.diagnostics
    if d.name == "none":
        return None, [], []
    from second_order.suite.spectrum import SpectrumSizes, column_names, is_summary_column, make_curvature_probe
    from second_order.suite.training.step import loss_functions

    n = int(sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(abstract_params)))
    for key in ("lanczos_steps", "slq_steps"):
        if getattr(d, key) > n:
            raise ConfigError(f"diagnostics.{key} = {getattr(d, key)} is invalid: must be at most the {n} parameters")
    sizes = SpectrumSizes(d.top_k, d.lanczos_steps, d.trace_probes, d.slq_probes, d.slq_steps, d.negative_tol)
    dtype = "float64" if rc.x64 else "float32"
    fn = make_curvature_probe(lambda x, y: loss_functions(model.apply, x, y), d.matrices, sizes, dtype)
    columns = column_names(d.matrices, sizes)
    return (fn, d.every_steps), columns, [c for c in columns if is_summary_column(c)]


def _curvature_summary(run_dir: Path, clock: Mapping[str, float], enabled: bool) -> dict[str, Any]:
    if not enabled:
        return {}
    rows = runs.read_table(run_dir / runs.CURVATURE_FILE).get("step", np.zeros(0))
    return {"curvature_time_s": clock.get("curvature", 0.0), "curvature_calls": len(rows)}


def _wandb_logger(rc: ValidConfig, run_dir: Path, cfg: Mapping[str, Any], resume_id: str | None) -> Any:
    w = rc.logger.wandb
    if w.mode == "disabled":
        return None
    from second_order.suite.tracking.wandb_logger import WandbLogger

    return WandbLogger(
        mode=w.mode,
        project=w.project,
        entity=w.entity,
        run_dir=run_dir,
        name=f"{rc.experiment_name}/{rc.optimizer.name}/seed{rc.seed}",
        group=rc.experiment_name,
        tags=[rc.optimizer.name, rc.experiment_name, *w.tags],
        config=_plain(cfg),
        resume_id=resume_id,
        init_timeout=w.init_timeout_s,
    )


def _wandb_logged(rc: ValidConfig, run_dir: Path) -> dict[str, float] | None:
    """What the W&B offline logs of ``run_dir`` hold (None online: the server's copy is not read)."""
    if rc.logger.wandb.mode != "offline":
        return None
    from second_order.suite.tracking.wandb_convert import logged_through

    return logged_through(run_dir)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg).items() if k != "hydra"}


__all__ = ["run", "prepare", "build_optimizer", "check_run_dir", "config_differences", "RESUMABLE_KEYS"]
