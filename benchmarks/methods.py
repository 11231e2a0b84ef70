"""The benchmarked methods, read from ``configs/optimizer/*.yaml`` and built as the suite builds them.

Nothing here repeats a hyperparameter: each :class:`Method` carries its composed
``optimizer`` and ``trainer`` config nodes, and :func:`build_tx` turns the former into the
optax transformation.  A config with a ``max_rank`` key yields two methods: its dense path
(key ``<name>``, ``max_rank=None``) and its low-rank path (key ``<name>_lowrank``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optax

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
LOW_RANK_SUFFIX = "_lowrank"

# Deliberate subsets, named here only (a name without a config is left out):
#: Steps costing about a gradient or a few dozen curvature products: timed round-robin with
#: the gradient, trained for a whole epoch (epoch section), looped in Python (baseline).
FAST = ("sgd", "hessian_free", "gauss_newton")
#: Timed over consecutive steps in --quick too (the full run times every method under the budget).
RUN_QUICK = (*FAST, "kfac")
#: The scaling section: the fast methods, damped Newton on its dense path and undamped Newton
#: on its low-rank path (the undamped dense step needs an n×n eigendecomposition: minutes).
SCALING = (*FAST, "newton_damped", "newton" + LOW_RANK_SUFFIX)


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config ``scripts/train.py`` would run with ``overrides``, as plain containers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from second_order.suite import config as suite_config

    register = getattr(suite_config, "register", None)  # the suite's schemas in Hydra's ConfigStore, if any
    if register is not None:
        register()

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def build_tx(optimizer: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
    """Config → optax transformation: instantiate the ``optimizer`` node minus its ``name``.

    The one place that maps a config to a transformation; it follows the suite's rule
    (``_target_`` called with the remaining keys, wrapped in ``with_extra_args_support``).
    """
    from hydra.utils import instantiate

    node = {k: v for k, v in optimizer.items() if k != "name"}
    return optax.with_extra_args_support(instantiate(node))


@dataclasses.dataclass(frozen=True)
class Method:
    """One benchmarked method: a config's optimizer on one solve path."""

    key: str  # JSON key: the config's name, or <name>_lowrank
    config: str  # the config file's stem: ``optimizer=<config>``
    optimizer: Mapping[str, Any]  # the composed ``optimizer`` node (name, _target_, hyperparameters)
    trainer: Mapping[str, Any]  # the composed ``trainer`` node of this optimizer's config

    @property
    def name(self) -> str:
        return str(self.optimizer["name"])

    @property
    def low_rank(self) -> bool:
        return self.key.endswith(LOW_RANK_SUFFIX)

    @property
    def dense_hessian(self) -> bool:
        """Builds the n×n Hessian every step (a ``max_rank`` config on its dense path)."""
        return "max_rank" in self.optimizer and not self.low_rank

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer["learning_rate"])

    @property
    def damping(self) -> float:
        return float(self.optimizer.get("damping") or 0.0)

    @property
    def configured_max_rank(self) -> int | None:
        return self.optimizer.get("max_rank")

    def tx(self, max_rank: int | None = None) -> optax.GradientTransformationExtraArgs:
        """The transformation; ``max_rank`` is used on the low-rank path only."""
        opt = dict(self.optimizer)
        if "max_rank" in opt:
            opt["max_rank"] = max_rank if self.low_rank else None
        if "max_params" in opt:
            opt["max_params"] = None  # the benchmark's own time and memory rules decide (scaling.py)
        return build_tx(opt)


def config_names() -> list[str]:
    """The optimizer configs: FAST ones first (in that order), then the others by name."""
    names = [p.stem for p in sorted((CONFIG_DIR / "optimizer").glob("*.yaml"))]
    return [n for n in FAST if n in names] + [n for n in names if n not in FAST]


def load_methods() -> dict[str, Method]:
    """Every config's method, keyed as in the JSON; low-rank paths after all dense ones."""
    dense, low = {}, {}
    for stem in config_names():
        cfg = compose([f"optimizer={stem}"])
        m = Method(cfg["optimizer"]["name"], stem, cfg["optimizer"], cfg["trainer"])
        dense[m.key] = m
        if "max_rank" in m.optimizer:
            low[m.key + LOW_RANK_SUFFIX] = dataclasses.replace(m, key=m.key + LOW_RANK_SUFFIX)
    return {**dense, **low}


def subset(methods: Mapping[str, Method], keys: Sequence[str]) -> dict[str, Method]:
    """``methods`` restricted to ``keys`` (in that order; keys without a config are left out)."""
    return {k: methods[k] for k in keys if k in methods}


def low_rank_bound(batch: int, hidden: int, num_classes: int) -> int:
    """Rank bound of a one-hidden-layer ReLU MLP's mini-batch Hessian: batch·(classes + 2·hidden)."""
    return batch * (num_classes + 2 * hidden)


def resolve_max_rank(arg: int | None, configured: int | None, bound: int) -> int:
    """--low-rank-max-rank, else the config's ``max_rank`` capped by the rank bound, else the bound."""
    if arg:
        return int(arg)
    return min(int(configured), bound) if configured else bound


def labels(keys: Sequence[str]) -> dict[str, str]:
    """Display labels: the config name, with its solve path when both paths are listed."""
    out = {}
    for k in keys:
        if k.endswith(LOW_RANK_SUFFIX):
            out[k] = f"{k[: -len(LOW_RANK_SUFFIX)]} (low-rank)"
        elif k + LOW_RANK_SUFFIX in keys:
            out[k] = f"{k} (dense)"
        else:
            out[k] = k
    return out
