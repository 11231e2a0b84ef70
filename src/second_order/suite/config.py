"""The experiment config: one dataclass per group, registered in Hydra's ConfigStore.

These dataclasses are the one place where each key's type, default and allowed
range live.  ``configs/config.yaml`` extends the schema ``run_schema``, so Hydra
type-checks every value while composing; :func:`validate` then checks the ranges
kept in each field's metadata and the optimizer's own keyword arguments, and
returns the config as typed dataclasses.  A bad value raises :class:`ConfigError`
whose message is one line naming the key, the value and what is allowed, e.g.
``trainer.batch_size = 0 is invalid: must be an integer >= 1``.

The optimizer group is open: each YAML file in ``configs/optimizer/`` names a
function (``_target_``) returning an optax transformation, and its other keys are
that function's keyword arguments, checked against its signature and type hints.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

WANDB_MODES = ("offline", "online", "disabled")
SEED_MAX = 2**31 - 1  # PRNGKey seeds: 32-bit without x64; one range for both modes


class ConfigError(ValueError):
    """A user error in the configuration (printed as one line, no traceback)."""


def setting(
    default: Any = MISSING,
    *,
    help: str,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its documentation and allowed range in the metadata."""
    meta = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "check": check,
        "allowed": allowed,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


DATASETS = ("mnist", "fashion_mnist", "cifar10")  # second_order.suite.data.DATASETS (a test keeps them equal)


@dataclasses.dataclass
class DataConfig:
    name: str = setting(
        "mnist", help="the dataset (configs/data/<name>.yaml sets it with its directory)", choices=DATASETS
    )
    dir: str | None = setting(
        help="directory with the dataset's files (a preset sets its default); null: its default, else TFDS",
        check=lambda v: v is None or bool(v),
        allowed="a directory path or null (null: TensorFlow Datasets)",
    )
    verify_checksums: bool = setting(
        True, help="check the canonical files: MD5 (MNIST, Fashion-MNIST), class counts (CIFAR-10)"
    )
    validation_examples: int = setting(
        0,
        help="hold out this many training examples as a validation split (val_loss, val_acc; tuning); 0: none",
        minimum=0,
    )


MODELS = ("mlp", "cnn")


@dataclasses.dataclass
class ModelConfig:
    """The network (second_order.suite.model): an MLP, or a CNN whose conv blocks precede an MLP head."""

    name: str = setting("mlp", help="mlp: Dense ReLU layers; cnn: conv blocks, then Dense layers", choices=MODELS)
    hidden: list[int] = setting(
        help="widths of the hidden ReLU Dense layers (the paper: [10], 7,960 parameters; cnn: after the convs)",
        check=lambda v: all(h >= 1 for h in v),
        allowed="a list of layer widths, each an integer >= 1 (e.g. [10])",
    )
    channels: list[int] = setting(
        factory=list,
        help="cnn: output channels of each conv block (kernel_size² conv, ReLU, 2x2 max-pool); mlp: []",
        check=lambda v: all(c >= 1 for c in v),
        allowed="a list of channel counts, each an integer >= 1 (e.g. [16, 32])",
    )
    kernel_size: int = setting(3, help="cnn: side of the square conv kernels", minimum=1)
    num_classes: int = setting(help="output logits (the dataset's classes)", minimum=2)
    param_dtype: str = setting(
        "float32",
        help="dtype of the parameters: initialised in float32, then cast (float64 needs x64)",
        choices=("float32", "float64"),
    )


@dataclasses.dataclass
class TrainerConfig:
    epochs: int = setting(7, help="passes over the training set (the paper: 7)", minimum=1)
    batch_size: int = setting(64, help="examples per step (the paper: 64)", minimum=1)
    max_steps: int | None = setting(None, help="cap on optimizer steps (a budget); null: none", minimum=1)
    max_time_s: float | None = setting(None, help="cap on optimizer seconds (a budget); null: none", minimum=0)
    eval_every: int = setting(1, help="evaluate on the test set every this many epochs", minimum=1)
    eval_every_steps: int | None = setting(
        None,
        help="also evaluate every this many steps of each epoch (time to target); null: per epoch only",
        minimum=1,
    )
    chunk_steps: int = setting(100, help="steps per compiled chunk (logs, signals, budgets checked between)", minimum=1)
    checkpoint_every_s: float = setting(300.0, help="also checkpointed after every evaluation and on stop", minimum=0)
    resume: bool = setting(False, help="continue from <run dir>/checkpoint (same config + trainer.resume=true)")
    progress: bool = setting(True, help="progress bar on stderr")
    devices: int | None = setting(
        None, help="local devices the batch is split over (data parallel); null: all of them", minimum=1
    )


DIAGNOSTICS = ("none", "curvature")
CURVATURE_MATRICES = ("hessian", "gauss_newton")


@dataclasses.dataclass
class DiagnosticsConfig:
    """In-loop measurements off the optimizer clock (``diagnostics=curvature``; see second_order.suite.spectrum)."""

    name: str = setting("none", help="none, or curvature: Hessian and Gauss-Newton spectra", choices=DIAGNOSTICS)
    every_steps: int = setting(
        100, help="measure at every this many steps of each epoch (and at its first and the last step)", minimum=1
    )
    matrices: list[str] = setting(
        factory=lambda: list(CURVATURE_MATRICES),
        help="curvature matrices measured",
        check=lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(CURVATURE_MATRICES),
        allowed="a non-empty list of distinct names from hessian, gauss_newton",
    )
    top_k: int = setting(3, help="largest and smallest eigenvalues logged per matrix", minimum=1)
    lanczos_steps: int = setting(40, help="Lanczos steps (products) for the extreme eigenvalues", minimum=1)
    trace_probes: int = setting(16, help="Rademacher probes of the Hutchinson trace", minimum=1)
    slq_probes: int = setting(4, help="probes of the stochastic Lanczos quadrature density", minimum=1)
    slq_steps: int = setting(30, help="Lanczos steps per SLQ probe (nodes per probe)", minimum=1)
    negative_tol: float = setting(
        1e-3, help="negative mass counts eigenvalues below -negative_tol * max|eigenvalue|", minimum=0, maximum=0.5
    )


@dataclasses.dataclass
class WandbConfig:
    mode: str = setting(
        "${oc.env:WANDB_MODE,offline}",
        help="offline: files under <run dir>/wandb; online: needs wandb login (default: $WANDB_MODE, else offline)",
        choices=WANDB_MODES,
        allowed="one of offline, online, disabled (set here or by the environment variable WANDB_MODE)",
    )
    project: str = setting("second-order", help="W&B project", check=bool, allowed="a non-empty name")
    entity: str | None = setting(None, help="W&B entity (user or team); null: your default")
    tags: list[str] = setting(factory=list, help="extra W&B tags")
    init_timeout_s: float = setting(60.0, help="seconds to wait for wandb.init", minimum=0)


@dataclasses.dataclass
class LoggerConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class RunConfig:
    """The whole config of one run (the ``hydra`` node aside)."""

    seed: int = setting(0, help="seeds initialisation, data order and random sketches", minimum=0, maximum=SEED_MAX)
    experiment_name: str = setting(
        "default",
        help="groups runs in runs/<experiment_name>/",
        check=lambda v: bool(v) and "/" not in v,
        allowed="a non-empty name without '/'",
    )
    x64: bool = setting(True, help="enable float64 in JAX (the second-order solves run in float64)")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: Any = MISSING  # open group: see validate_optimizer
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="logger", name="wandb", node=LoggerConfig)


register()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer group: its name, the function and the function's keyword arguments."""

    name: str
    target: str
    kwargs: dict[str, Any]


# --------------------------------------------------------------------------- errors


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is invalid: must be {allowed}")


def _field(full_key: str) -> dataclasses.Field[Any] | None:
    """The schema field of a dotted key, e.g. ``trainer.epochs``."""
    node: Any = RunConfig
    found = None
    for part in full_key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        found = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if found is None:
            return None
        node = typing.get_type_hints(node).get(part)
    return found


def expected(full_key: str) -> str | None:
    """What a schema key allows, in words: ``an integer >= 1``, ``true or false or null``..."""
    f = _field(full_key)
    if f is None:
        return None
    kind = str(f.type)
    optional = "None" in kind
    if f.metadata.get("allowed") or f.metadata.get("choices"):
        return _describe(f.metadata, optional)
    for word, phrase in (("bool", "true or false"), ("int", "an integer"), ("float", "a number"), ("str", "a string")):
        if kind.replace("None", "").strip(" |").startswith(word):
            lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
            bounds = " and ".join(
                b for b in (f">= {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else "") if b
            )
            return phrase + (" " + bounds if bounds else "") + (" or null" if optional else "")
    return None


def from_omegaconf_error(err: OmegaConfBaseException) -> ConfigError:
    """One line for a type error OmegaConf raised against the schema."""
    key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "config")
    allowed = expected(key)
    if allowed is not None:
        return _fail(key, getattr(err, "value", None), allowed)
    message = str(getattr(err, "msg", "") or err).strip().splitlines()[0]
    return ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------- validation


def _describe(meta: Mapping[str, Any], optional: bool) -> str:
    if meta.get("allowed"):
        return str(meta["allowed"])
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo, hi = meta.get("minimum"), meta.get("maximum")
    bounds = [f">= {_bound(lo)}"] if lo is not None else []
    bounds += [f"<= {_bound(hi)}"] if hi is not None else []
    text = "a number" + (" " + " and ".join(bounds) if bounds else "")
    return text + (" or null" if optional else "")


def _bound(x: float) -> str:
    """A range bound as a user would type it: integers in full (2147483647, not 2.14748e+09)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_dataclass(obj: Any, prefix: str) -> None:
    """Check every field of a typed config against the rules in its metadata."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_dataclass(value, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        if not meta or value is None:
            continue
        key = prefix + f.name
        optional = "None" in str(f.type)
        ok = True
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if meta.get("minimum") is not None and isinstance(value, (int, float)) and value < meta["minimum"]:
            ok = False
        if meta.get("maximum") is not None and isinstance(value, (int, float)) and value > meta["maximum"]:
            ok = False
        if meta.get("choices") is not None and value not in meta["choices"]:
            ok = False
        if meta.get("check") is not None and not meta["check"](value):
            ok = False
        if not ok:
            described = _describe(meta, optional)
            if isinstance(value, int) and not isinstance(value, bool) and "number" in described:
                described = described.replace("a number", "an integer")
            raise _fail(key, value, described)


def _check_model(m: ModelConfig) -> None:
    """What each architecture needs: an MLP hidden layers and no convs, a CNN convs."""
    if m.name == "mlp" and not m.hidden:
        raise _fail("model.hidden", [], "a non-empty list of layer widths for model.name = mlp (e.g. [10])")
    if m.name == "mlp" and m.channels:
        raise _fail("model.channels", m.channels, "[] for model.name = mlp (conv blocks need model=cnn)")
    if m.name == "cnn" and not m.channels:
        raise _fail("model.channels", [], "a non-empty list of channel counts for model.name = cnn (e.g. [16, 32])")


@dataclasses.dataclass(frozen=True)
class ValidConfig:
    """A validated config: the typed groups and the optimizer's call."""

    seed: int
    experiment_name: str
    x64: bool
    data: DataConfig
    model: ModelConfig
    trainer: TrainerConfig
    optimizer: OptimizerConfig
    logger: LoggerConfig
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)


def validate(cfg: Mapping[str, Any]) -> ValidConfig:
    """Check a resolved config (plain dict) and return it typed; raise ConfigError on the first bad value."""
    plain: dict[Any, Any] = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    optimizer = plain.pop("optimizer", None)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), {**plain, "optimizer": {}}))
    except OmegaConfBaseException as err:
        if type(err).__name__ == "ConfigKeyError":
            key = getattr(err, "full_key", None) or getattr(err, "key", "?")
            raise ConfigError(
                f"{key} is not a known key; see `python scripts/train.py --cfg job` "
                "for the keys (new keys need a '+' only in optimizer configs)"
            ) from None
        raise from_omegaconf_error(err) from None
    assert isinstance(typed, RunConfig)
    _check_dataclass(typed, "")
    if typed.model.param_dtype == "float64" and not typed.x64:
        raise _fail("model.param_dtype", "float64", "float32 when x64 = false (float64 needs x64=true)")
    _check_model(typed.model)
    if typed.diagnostics.top_k > typed.diagnostics.lanczos_steps:
        raise _fail(
            "diagnostics.top_k",
            typed.diagnostics.top_k,
            f"at most diagnostics.lanczos_steps = {typed.diagnostics.lanczos_steps}",
        )
    from second_order.suite.optimizer_config import validate_optimizer

    return ValidConfig(
        typed.seed,
        typed.experiment_name,
        typed.x64,
        typed.data,
        typed.model,
        typed.trainer,
        validate_optimizer(optimizer),
        typed.logger,
        typed.diagnostics,
    )


def schema_defaults() -> dict[str, Any]:
    """Every schema key's default, as dotted keys (``{"data.name": "mnist", ...}``; the optimizer aside).

    What a run whose config.yaml was written before a key existed ran with: resume checks
    and report grouping fill a missing key with it.
    """

    def walk(node: Any, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(node):
            if f.name == "optimizer":
                continue
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                out.update(walk(value, f"{prefix}{f.name}."))
            elif value is not dataclasses.MISSING and value is not MISSING:
                out[prefix + f.name] = value
        return out

    return walk(RunConfig, "")
