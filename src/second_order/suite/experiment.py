"""One experiment run: validated config → data, model, optimizer → trainer → run directory."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import optax
import yaml

from second_order.suite.training import checkpoint
from second_order.suite.tracking import environment, runs
from second_order.suite.config import ConfigError, OptimizerConfig, RunConfig, validate
from second_order.suite.model import MLP, param_count
from second_order.optim import collect_diagnostics
from second_order.suite.tracking.run_logger import RunLogger
from second_order.suite.training.trainer import TrainSettings, fit, mean_last_epoch_loss


def build_optimizer(opt: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
    """Call the function named by ``optimizer._target_`` with the config's hyperparameters.

    Adding a method is one function returning an optax transformation plus one YAML
    file in ``configs/optimizer/`` naming it.  Plain optax transformations (SGD) get
    ``with_extra_args_support`` so that every optimizer is called the same way.
    """
    module_name, _, attr = opt.target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ConfigError(f"optimizer._target_ = {opt.target!r} is invalid: no such function") from None
    accepted = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    for key in opt.kwargs:
        if key not in accepted and not takes_any:
            allowed = ", ".join(k for k in accepted if k not in ("self",))
            raise ConfigError(f"optimizer.{key} is not a parameter of {opt.target}; it takes: {allowed}")
    try:
        tx = fn(**opt.kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer ({opt.name}): {err}") from None
    return optax.with_extra_args_support(tx)


def prepare(cfg: Mapping[str, Any]) -> tuple[RunConfig, optax.GradientTransformationExtraArgs]:
    """Validate everything that can be checked without data; raise ConfigError otherwise."""
    rc = validate(cfg)
    jax.config.update("jax_enable_x64", rc.x64)
    return rc, build_optimizer(rc.optimizer)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to mix a new run into a directory that already holds one."""
    summary = run_dir / runs.SUMMARY_FILE
    if resume or not summary.exists():
        return
    status = json.loads(summary.read_text()).get("status", "unknown")
    raise ConfigError(
        f"run directory {run_dir} already holds a run (status: {status}); continue it with "
        "trainer.resume=true, or start a new one elsewhere with hydra.run.dir=<dir>"
    )


def run(cfg: Mapping[str, Any], run_dir: Path | str) -> dict[str, Any]:
    """Run one experiment into ``run_dir`` and return its summary (also in summary.json)."""
    from second_order.suite.data import load_mnist  # imported here: config errors surface before any data I/O

    run_dir = Path(run_dir)
    rc, tx = prepare(cfg)
    check_run_dir(run_dir, rc.trainer.resume)
    data = load_mnist(rc.data.dir, verify_checksums=rc.data.verify_checksums)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.CONFIG_FILE).write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    runs.write_json(run_dir / runs.ENV_FILE, environment.record())

    model = MLP(hidden=rc.model.hidden, num_classes=rc.model.num_classes)
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.train_images[:1])["params"]
    diag_names = list(collect_diagnostics(jax.eval_shape(tx.init, abstract_params)))
    resuming = rc.trainer.resume and checkpoint.exists(run_dir)
    wandb = _wandb_logger(rc, run_dir, cfg, resuming)
    logger = RunLogger(run_dir, diag_names, wandb)
    base = {
        "optimizer": rc.optimizer.name,
        "experiment": rc.experiment_name,
        "seed": rc.seed,
        "param_count": int(sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(abstract_params))),
        "wandb_run_id": getattr(wandb, "run_id", None),
    }
    runs.write_json(run_dir / runs.SUMMARY_FILE, {**base, "status": "running"})
    settings = TrainSettings(**{k: getattr(rc.trainer, k) for k in TrainSettings.__dataclass_fields__})
    try:
        outcome = fit(model=model, tx=tx, data=data, settings=settings, seed=rc.seed, run_dir=run_dir, logger=logger)
    finally:
        logger.close()
    steps = runs.read_table(run_dir / runs.STEPS_FILE)
    summary = {
        **base,
        "status": outcome.status,
        "train_loss": mean_last_epoch_loss(steps),
        "test_loss": outcome.last_eval.get("test_loss"),
        "test_acc": outcome.last_eval.get("test_acc"),
        "steps": outcome.steps,
        "epochs_completed": outcome.epochs_completed,
        "train_time_s": outcome.clock.get("train", 0.0),
        "compile_time_s": outcome.clock.get("compile", 0.0),
        "eval_time_s": outcome.clock.get("eval", 0.0),
        "log_time_s": outcome.clock.get("log", 0.0),
        "checkpoint_time_s": outcome.clock.get("checkpoint", 0.0),
        "diverged": outcome.status == "diverged",
        "diverged_step": outcome.diverged_step,
        "signal": outcome.signal,
    }
    runs.write_json(run_dir / runs.SUMMARY_FILE, summary)
    if wandb is not None:
        wandb.set_summary(summary)
        wandb.finish(exit_code=0 if outcome.status in ("completed", "budget", "diverged") else 1)
    return summary


def _wandb_logger(rc: RunConfig, run_dir: Path, cfg: Mapping[str, Any], resuming: bool):
    if rc.wandb.mode == "disabled":
        return None
    from second_order.suite.tracking.wandb_logger import WandbLogger

    resume_id = None
    if resuming and (run_dir / runs.SUMMARY_FILE).exists():
        resume_id = json.loads((run_dir / runs.SUMMARY_FILE).read_text()).get("wandb_run_id")
    return WandbLogger(
        mode=rc.wandb.mode,
        project=rc.wandb.project,
        entity=rc.wandb.entity,
        run_dir=run_dir,
        name=f"{rc.experiment_name}/{rc.optimizer.name}/seed{rc.seed}",
        group=rc.experiment_name,
        tags=[rc.optimizer.name, rc.experiment_name, *rc.wandb.tags],
        config=_plain(cfg),
        resume_id=resume_id,
        init_timeout=rc.wandb.init_timeout_s,
    )


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg).items() if k != "hydra"}


__all__ = ["run", "prepare", "build_optimizer", "param_count"]
