"""Validation of a composed experiment config into typed dataclasses.

Every value is checked before any work starts; a bad one raises :class:`ConfigError`
whose message is one line naming the key, the value and what is allowed, e.g.
``optimizer.damping = -1.0 is invalid: must be a number >= 0``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A user error in the configuration (printed as one line, no traceback)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dir: str | None
    verify_checksums: bool


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...]
    num_classes: int


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    epochs: int
    batch_size: int
    max_steps: int | None
    max_time_s: float | None
    eval_every: int
    chunk_steps: int
    checkpoint_every_s: float
    resume: bool
    progress: bool


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str
    target: str
    kwargs: dict[str, Any]  # everything passed to the optimizer function


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    mode: str
    project: str
    entity: str | None
    tags: tuple[str, ...]
    init_timeout_s: float


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int
    experiment_name: str
    x64: bool
    data: DataConfig
    model: ModelConfig
    trainer: TrainerConfig
    optimizer: OptimizerConfig
    wandb: WandbConfig


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is invalid: must be {allowed}")


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    node = cfg.get(key)
    if not isinstance(node, Mapping):
        raise _fail(key, node, "a config group (see configs/)")
    return node


def _check_keys(node: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    for k in node:
        if k not in allowed:
            raise ConfigError(f"{prefix}{k} is not a known key; known keys: {', '.join(sorted(allowed))}")


def _int(node: Mapping[str, Any], key: str, prefix: str, minimum: int, optional: bool = False) -> int | None:
    v = node.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        extra = " or null" if optional else ""
        raise _fail(prefix + key, v, f"an integer >= {minimum}{extra}")
    return v


def _float(
    node: Mapping[str, Any], key: str, prefix: str, minimum: float = 0.0, *, open_interval: tuple[float, float] | None = None,
    optional: bool = False,
) -> float | None:
    v = node.get(key)
    if v is None and optional:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if open_interval is not None:
        lo, hi = open_interval
        if not ok or not lo < v < hi:
            raise _fail(prefix + key, v, f"a number in the open interval ({lo:g}, {hi:g})")
    elif not ok or v < minimum:
        raise _fail(prefix + key, v, f"a number >= {minimum:g}" + (" or null" if optional else ""))
    return float(v)


def _bool(node: Mapping[str, Any], key: str, prefix: str) -> bool:
    v = node.get(key)
    if not isinstance(v, bool):
        raise _fail(prefix + key, v, "true or false")
    return v


def validate(cfg: Mapping[str, Any]) -> RunConfig:
    """Check a resolved config (plain dict) and return it typed; raise ConfigError on the first bad value."""
    top = {"seed", "experiment_name", "x64", "data", "model", "trainer", "optimizer", "logger"}
    _check_keys({k: v for k, v in cfg.items() if k != "hydra"}, "", top)
    seed = _int(cfg, "seed", "", 0)
    name = cfg.get("experiment_name")
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail("experiment_name", name, "a non-empty name without '/'")
    x64 = _bool(cfg, "x64", "")

    d = _section(cfg, "data")
    _check_keys(d, "data.", {"dir", "verify_checksums"})
    ddir = d.get("dir")
    if ddir is not None and (not isinstance(ddir, str) or not ddir):
        raise _fail("data.dir", ddir, "a directory path or null (null: TensorFlow Datasets)")
    data = DataConfig(dir=ddir, verify_checksums=_bool(d, "verify_checksums", "data."))

    m = _section(cfg, "model")
    _check_keys(m, "model.", {"hidden", "num_classes"})
    hidden = m.get("hidden")
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    if not isinstance(hidden, (list, tuple)) or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise _fail("model.hidden", hidden, "a list of layer widths, each an integer >= 1 (e.g. [10])")
    model = ModelConfig(hidden=tuple(hidden), num_classes=_int(m, "num_classes", "model.", 2))

    t = _section(cfg, "trainer")
    tkeys = {f.name for f in dataclasses.fields(TrainerConfig)}
    _check_keys(t, "trainer.", tkeys)
    trainer = TrainerConfig(
        epochs=_int(t, "epochs", "trainer.", 1),
        batch_size=_int(t, "batch_size", "trainer.", 1),
        max_steps=_int(t, "max_steps", "trainer.", 1, optional=True),
        max_time_s=_float(t, "max_time_s", "trainer.", 0.0, optional=True),
        eval_every=_int(t, "eval_every", "trainer.", 1),
        chunk_steps=_int(t, "chunk_steps", "trainer.", 1),
        checkpoint_every_s=_float(t, "checkpoint_every_s", "trainer.", 0.0),
        resume=_bool(t, "resume", "trainer."),
        progress=_bool(t, "progress", "trainer."),
    )
    if trainer.batch_size > 60000:
        raise _fail("trainer.batch_size", trainer.batch_size, "at most the 60,000 training images")

    optimizer = _validate_optimizer(_section(cfg, "optimizer"))

    lg = _section(cfg, "logger")
    _check_keys(lg, "logger.", {"wandb"})
    w = _section(lg, "wandb") if "wandb" in lg else {}
    _check_keys(w, "logger.wandb.", {"mode", "project", "entity", "tags", "init_timeout_s"})
    mode = w.get("mode", "offline")
    if mode not in WANDB_MODES:
        raise _fail("logger.wandb.mode", mode, "one of " + ", ".join(WANDB_MODES))
    tags = w.get("tags") or []
    if not isinstance(tags, (list, tuple)) or not all(isinstance(x, str) for x in tags):
        raise _fail("logger.wandb.tags", tags, "a list of strings")
    wandb = WandbConfig(
        mode=mode,
        project=str(w.get("project") or "second-order"),
        entity=w.get("entity"),
        tags=tuple(tags),
        init_timeout_s=_float(w, "init_timeout_s", "logger.wandb.", 0.0) if "init_timeout_s" in w else 60.0,
    )
    return RunConfig(seed, name, x64, data, model, trainer, optimizer, wandb)


# Hyperparameters every optimizer config may carry, with their rules.
_OPTIMIZER_RULES = {
    "learning_rate": dict(minimum=0.0),
    "damping": dict(minimum=0.0),
    "tol": dict(open_interval=(0.0, 1.0)),
}


def _validate_optimizer(o: Mapping[str, Any]) -> OptimizerConfig:
    name, target = o.get("name"), o.get("_target_")
    if not isinstance(name, str) or not name:
        raise _fail("optimizer.name", name, "the optimizer's name (the file name in configs/optimizer/)")
    if not isinstance(target, str) or "." not in target:
        raise _fail("optimizer._target_", target, "a dotted path to an optimizer function")
    kwargs: dict[str, Any] = {}
    for key, value in o.items():
        if key in ("name", "_target_"):
            continue
        if key in _OPTIMIZER_RULES:
            kwargs[key] = _float(o, key, "optimizer.", **_OPTIMIZER_RULES[key])
        elif key == "maxiter":
            kwargs[key] = _int(o, key, "optimizer.", 1, optional=True)
        else:
            kwargs[key] = value
    if "learning_rate" not in kwargs:
        raise ConfigError("optimizer.learning_rate is missing: every optimizer config needs one")
    return OptimizerConfig(name=name, target=target, kwargs=kwargs)
