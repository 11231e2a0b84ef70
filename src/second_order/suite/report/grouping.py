"""Which runs are seeds of the same experiment, and how each group is named and drawn.

Grouping rule: two runs are in one group when they have the same optimizer and the
same value for every key of their config.yaml (flattened to dotted keys; a key a run
lacks counts as ``None``), except

* :data:`IGNORED_KEYS`: seed and bookkeeping that does not change the experiment;
* :data:`BUDGET_KEYS`: step/time budgets; they do not split groups (a budget-limited
  run is a shorter seed of the same experiment) but tables and captions show them.

Labels name the method and, in parentheses, the keys that tell its groups apart:
the optimizer keys that differ between groups of the same optimizer, and every other
key that differs between the groups of some optimizer, e.g. ``"HF Newton (damping 1)"``.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matplotlib.colors import to_hex, to_rgb

from second_order.suite.report.loading import warn
from second_order.suite.report.runinfo import budget
from second_order.suite.report.style import MethodStyle, method_style, ordered_methods
from second_order.suite.tracking.runs import Run, flatten_with_defaults

IGNORED_KEYS: tuple[str, ...] = (
    "seed",
    "*.seed",  # seeds of an optimizer's random parts (probes, sketches), e.g. optimizer.seed: ${seed}
    "experiment_name",  # a name; --experiment selects by it, pooled experiments are warned about
    "trainer.resume",
    "trainer.progress",
    "trainer.chunk_steps",
    "trainer.checkpoint_every_s",
    "data.dir",
    "data.verify_checksums",
    "logger.*",
    "hydra.*",
)
BUDGET_KEYS: tuple[str, ...] = ("trainer.max_steps", "trainer.max_time_s")
_NOT_IN_LABELS = ("optimizer.name", "optimizer._target_")
_SHORT = {"learning_rate": "learning rate", "batch_size": "batch", "num_classes": "classes", "x64": "float64"}
_VARIANT_LINESTYLES: tuple[Any, ...] = ("-", (0, (1, 1)), "-.", (0, (3, 1, 1, 1, 1, 1)), "--")
_VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P")


def is_ignored(key: str) -> bool:
    """Whether ``key`` never splits groups (ignored or a budget)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in IGNORED_KEYS + BUDGET_KEYS)


def experiment_config(run: Run) -> dict[str, Any]:
    """The run's config keys that define its experiment (config order), optimizer name included.

    A schema key the run's config.yaml lacks (added after the run was written, e.g.
    ``data.name``) counts as its default, so old and new runs of one experiment group together.
    """
    flat = {k: v for k, v in flatten_with_defaults(run.config).items() if not is_ignored(k)}
    flat["optimizer.name"] = run.optimizer
    return flat


@dataclasses.dataclass
class Group:
    """Seeds of one experiment: same optimizer, same config (up to ignored keys)."""

    optimizer: str
    config: dict[str, Any]  # experiment_config shared by its runs
    runs: list[Run]
    varying: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys in the label
    style: MethodStyle = dataclasses.field(default_factory=lambda: method_style("?"))
    id: str = ""

    @property
    def label(self) -> str:
        return self.style.label

    @property
    def name(self) -> str:
        return self.style.name

    def settings(self) -> str:
        """The optimizer's hyper-parameters from the config (``"learning rate 0.5, damping 32"``)."""
        items = [(k, v) for k, v in self.config.items()
                 if k.startswith("optimizer.") and k not in _NOT_IN_LABELS and v is not None]  # fmt: skip
        return ", ".join(f"{short_key(k)} {fmt_value(v)}" for k, v in items) or "settings not recorded"

    def budgets(self) -> str:
        """Distinct budgets of the runs (``"max steps 200"``; ``""`` when none had one)."""
        return "; ".join(sorted({b for b in map(budget, self.runs) if b}))


def short_key(key: str) -> str:
    """``"optimizer.learning_rate"`` -> ``"learning rate"``."""
    last = key.rsplit(".", 1)[-1]
    return _SHORT.get(last, last.replace("_", " "))


def fmt_value(value: Any) -> str:
    """Config values for labels: ``32.0`` -> ``32``, ``(10, 10)`` -> ``10-10``."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "-".join(fmt_value(v) for v in value)
    return str(value)


def _sort_key(values: Iterable[Any]) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in values)  # fmt: skip


def _differing(configs: Sequence[dict[str, Any]]) -> set[str]:
    keys = set().union(*configs) if configs else set()
    return {k for k in keys if len({c.get(k) for c in configs}) > 1}  # values are hashable (flatten_config)


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs grouped by optimizer and experiment config; paper method order, seeds sorted.

    A run without config.yaml (e.g. an old or converted one) joins the group of its
    optimizer when there is exactly one, with a warning; else it forms its own group.
    Runs of several experiments pool as seeds unless that repeats a seed (then one group
    per experiment: :func:`_split_repeated_seeds`).
    """
    buckets: dict[tuple, list[Run]] = collections.defaultdict(list)
    configs: dict[tuple, dict[str, Any]] = {}
    bare = []
    for run in runs:
        if not run.config:
            bare.append(run)
            continue
        config = experiment_config(run)
        key = tuple(sorted(config.items(), key=lambda item: item[0]))
        buckets[key].append(run)
        configs.setdefault(key, config)
    for run in bare:
        same = [key for key in configs if configs[key]["optimizer.name"] == run.optimizer]
        key = same[0] if len(same) == 1 else (("optimizer.name", run.optimizer),)
        if len(same) == 1:
            warn(f"{run.path}: no config.yaml; counted as a seed of the only {run.optimizer} group")
        buckets[key].append(run)
        configs.setdefault(key, dict(key))
    _split_repeated_seeds(buckets, configs)
    groups = [Group(configs[key]["optimizer.name"], configs[key], sorted(rs, key=lambda r: (r.seed, str(r.path))))
              for key, rs in buckets.items()]  # fmt: skip
    by_method: dict[str, list[Group]] = collections.defaultdict(list)
    for group in groups:
        by_method[group.optimizer].append(group)
    # Non-optimizer keys (width, epochs, ...) name every group once they vary within one
    # optimizer's groups; a key that only a preset sets (e.g. a method's own parameter
    # dtype) does not clutter every label.
    common = {
        k
        for siblings in by_method.values()
        for k in _differing([g.config for g in siblings if len(g.config) > 1])
        if not k.startswith("optimizer.")
    }
    ordered: list[Group] = []
    for method in ordered_methods(by_method):
        siblings = by_method[method]
        keys = sorted((_differing([g.config for g in siblings if len(g.config) > 1]) | common) - set(_NOT_IN_LABELS))
        siblings.sort(key=lambda g: (len(g.config) == 1, _sort_key(g.config.get(k) for k in keys)))
        for i, group in enumerate(siblings):
            group.varying = {k: group.config.get(k) for k in keys if group.config.get(k) is not None}
            if len(group.config) == 1 and len(siblings) > 1:
                group.varying = {"config": "not recorded"}
            group.style = variant_style(method, i, group.varying, keys)
            group.id = method + "".join(f"[{k}={fmt_value(v)}]" for k, v in group.varying.items())
        ordered += siblings
    return ordered


def _split_repeated_seeds(buckets: dict[tuple, list[Run]], configs: dict[tuple, dict[str, Any]]) -> None:
    """A configuration whose experiments repeat a seed becomes one group per experiment.

    Runs of one configuration from several experiments pool as seeds (e.g. the paper's SGD
    in every figure group), but the same seed twice would count twice in the mean ± std;
    then ``experiment_name`` tells the groups apart (and names them).  A seed repeated
    within one experiment (the same run in two directories) is only warned about.
    """
    for key in list(buckets):
        rs = buckets[key]
        seeds = [r.seed for r in rs]
        experiments = sorted({str(r.experiment) for r in rs})
        if len(seeds) > len(set(seeds)) and len(experiments) > 1:
            base = configs.pop(key)
            del buckets[key]
            for name in experiments:
                sub = key + (("experiment_name", name),)
                buckets[sub] = [r for r in rs if str(r.experiment) == name]
                configs[sub] = {**base, "experiment_name": name}
    for rs in buckets.values():
        seeds = [r.seed for r in rs]
        twice = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        if twice:
            paths = ", ".join(str(r.path) for r in rs if r.seed in twice)
            warn(f"{rs[0].optimizer} ({rs[0].experiment}): seed(s) {', '.join(map(str, twice))} found more "
                 f"than once, each counted in the mean ± std: {paths}")  # fmt: skip


def variant_style(method: str, index: int, varying: Mapping[str, Any], keys: Sequence[str]) -> MethodStyle:
    """The method's style; later variants get a shaded colour, another dash and marker."""
    base = method_style(method)
    shorts = [short_key(k) for k in keys]
    names = {k: (short_key(k) if shorts.count(short_key(k)) == 1 else k) for k in keys}
    suffix = ", ".join(f"{names.get(k, k)} {fmt_value(v)}" for k, v in varying.items())
    label = f"{base.label} ({suffix})" if suffix else base.label
    name = f"{base.name} ({suffix})" if suffix else base.name
    if index == 0:
        return dataclasses.replace(base, label=label, name=name)
    towards = (0.0, 0.0, 0.0) if index % 2 else (1.0, 1.0, 1.0)
    amount = min(0.6, 0.35 * ((index + 1) // 2))
    r, g, b = (c + amount * (t - c) for c, t in zip(to_rgb(base.color), towards))
    return dataclasses.replace(
        base, label=label, name=name, color=to_hex((r, g, b)),
        linestyle=_VARIANT_LINESTYLES[index % len(_VARIANT_LINESTYLES)],
        marker=_VARIANT_MARKERS[index % len(_VARIANT_MARKERS)],
    )  # fmt: skip


def groups_of(groups: Sequence[Group], methods: Sequence[str] | None) -> dict[str, list[Group]]:
    """Groups per method of ``methods`` (default: every optimizer present), in that order."""
    by_method: dict[str, list[Group]] = collections.defaultdict(list)
    for group in groups:
        by_method[group.optimizer].append(group)
    wanted = list(methods) if methods is not None else list(by_method)
    return {m: by_method.get(m, []) for m in wanted}
