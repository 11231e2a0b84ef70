"""The open ``optimizer`` config group: checked against the function it names, built by Hydra.

A file in ``configs/optimizer/`` is ``name``, ``_target_`` (a function returning an
optax transformation) and that function's keyword arguments.  Nothing here lists
the optimizers: the function's signature and type hints are the one place where
its keys and their types live, and the function itself rejects values out of range
(its ``ValueError`` becomes a one-line :class:`ConfigError`).  Adding a method is
one function and one YAML file.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import optax

from second_order.suite.config import ConfigError, OptimizerConfig, _fail

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: The one rule the suite adds: optax's own optimizers accept a negative learning rate
#: (gradient ascent), which is never what a config means.  Every other range is
#: checked by the optimizer function itself.
NON_NEGATIVE = ("learning_rate",)


def resolve_target(target: str) -> Callable[..., Any]:
    """The function a dotted ``_target_`` names, or a ConfigError."""
    module_name, _, attr = target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"optimizer._target_ = {target!r} is invalid: no such function") from None
    if not callable(fn):
        raise ConfigError(f"optimizer._target_ = {target!r} is invalid: not a function")
    return fn


def _kinds(annotation: Any) -> set[type] | None:
    """The plain types a hint admits (``None`` when it admits anything we cannot check)."""
    if annotation is None or annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    kinds: set[type] = set()
    for member in members:
        if member in (type(None), bool, int, float, str):
            kinds.add(member)
        elif member is Any:
            return None
        # arrays, schedules, callables, dtypes: not expressible in YAML, ignored
    return kinds or None


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    if key.rsplit(".", 1)[-1].endswith("_dtype"):
        if value is None or value in FLOAT_DTYPES:
            return value
        raise _fail(key, value, "null or a floating dtype: " + ", ".join(FLOAT_DTYPES))
    kinds = _kinds(annotation)
    if kinds is None:
        return value
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, int) and (int in kinds or float in kinds):
        return value
    elif isinstance(value, float) and float in kinds and math.isfinite(value):
        return value
    elif isinstance(value, str) and str in kinds:
        return value
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    order = [k for k in (float, int, bool, str, type(None)) if k in kinds]
    if float in kinds and int in order:
        order.remove(int)
    raise _fail(key, value, " or ".join(names[k] for k in order))


def validate_optimizer(node: Any) -> OptimizerConfig:
    """Check the optimizer node against its function's signature; return its call."""
    if not isinstance(node, Mapping):
        raise _fail("optimizer", node, "a config group (a file in configs/optimizer/)")
    name, target = node.get("name"), node.get("_target_")
    if not isinstance(name, str) or not name:
        raise _fail("optimizer.name", name, "the optimizer's name (the file name in configs/optimizer/)")
    if not isinstance(target, str) or "." not in target:
        raise _fail("optimizer._target_", target, "a dotted path to an optimizer function")
    fn = resolve_target(target)
    params = inspect.signature(fn).parameters
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {k: p.annotation for k, p in params.items()}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("name", "_target_"):
            continue
        if key not in params and not takes_any:
            allowed = ", ".join(k for k, p in params.items() if p.kind is not p.VAR_KEYWORD)
            raise ConfigError(f"optimizer.{key} is not a parameter of {target}; it takes: {allowed}")
        kwargs[key] = _check_value(f"optimizer.{key}", value, hints.get(key))
        if key in NON_NEGATIVE and isinstance(value, (int, float)) and value < 0:
            raise _fail(f"optimizer.{key}", value, "a number >= 0")
    for key, p in params.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and key not in kwargs:
            raise ConfigError(
                f"optimizer.{key} is missing: {target} needs it (add it to configs/optimizer/{name}.yaml)"
            )
    return OptimizerConfig(name=name, target=target, kwargs=kwargs)


def build_optimizer(opt: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
    """``hydra.utils.instantiate`` the optimizer; plain optax ones get extra-args support.

    Every optimizer is then called the same way by the trainer (see
    :mod:`second_order.suite.training.step` for the extra arguments).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        tx = instantiate({"_target_": opt.target, **opt.kwargs}, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, TypeError)):
            raise config_error(opt, cause) from None
        raise
    if not hasattr(tx, "init") or not hasattr(tx, "update"):
        raise ConfigError(f"optimizer._target_ = {opt.target!r} is invalid: it did not return an optax transformation")
    return optax.with_extra_args_support(tx)


def config_error(opt: OptimizerConfig, err: BaseException) -> ConfigError:
    """The optimizer's ``ValueError``/``TypeError`` as one line in the config's words."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    # The core's convention "<fn>: <key> must be <rule>, got <value>" → the config's words.
    match = re.fullmatch(r"\w+: (\w+) must (.+), got (.+)", text)
    if match and match.group(1) in opt.kwargs:
        key, rule, value = match.groups()
        return ConfigError(f"optimizer.{key} = {value} is invalid: must {rule}")
    return ConfigError(f"optimizer ({opt.name}): {text}")


def init_state_shapes(opt: OptimizerConfig, tx: optax.GradientTransformationExtraArgs, params: Any) -> Any:
    """``jax.eval_shape(tx.init, params)``: what ``init`` refuses for these parameters (e.g. exact
    Newton above ``max_params``) becomes a one-line ConfigError before any work."""
    import jax

    try:
        return jax.eval_shape(tx.init, params)
    except ValueError as err:
        raise config_error(opt, err) from None
