"""The study's plan: which methods, workloads, search spaces and commands.

A study config (``configs/study/<name>.yaml``) names workloads (Hydra overrides), the
methods to leave out (every ``configs/optimizer/*.yaml`` joins otherwise: a new
optimizer file joins the study without code changes), the tuning budget and the
final runs.  :func:`search_space` reads a method's optimizer config and tunes each of
``tuning.keys`` it has, log-uniformly in ``[v / spread, v · spread]`` around its value ``v``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[4]
CONFIGS = REPO / "configs"
SERIAL_LAUNCHER = "basic"  # timed runs: one at a time (parallel jobs on one machine distort time)


class StudyError(ValueError):
    """A bad study config (one line naming the key and the fix)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    overrides: tuple[str, ...]
    target: float | None


@dataclasses.dataclass(frozen=True)
class Study:
    """A parsed study config (see configs/study/cpu.yaml for every key)."""

    name: str
    methods: tuple[str, ...]
    excluded: dict[str, str]
    workloads: tuple[Workload, ...]
    target_metric: str
    target_baselines: tuple[str, ...]
    validation_examples: int
    batch_size: int
    tuning: dict[str, Any]
    final: dict[str, Any]
    families: dict[str, tuple[str, ...]]

    def family(self, method: str) -> str:
        return next((f for f, members in self.families.items() if method in members), "other")


def optimizer_names(config_dir: Path = CONFIGS) -> list[str]:
    return sorted(p.stem for p in (config_dir / "optimizer").glob("*.yaml"))


def load_study(path: Path, config_dir: Path = CONFIGS) -> Study:
    """Parse and check a study config; raise StudyError naming the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"cannot read study config {path}: {err}") from None
    known = optimizer_names(config_dir)
    excluded = {str(k): str(v) for k, v in (raw.get("exclude") or {}).items()}
    chosen = [str(m) for m in raw.get("methods") or known]  # methods: a subset (default: every optimizer config)
    for key, names in (("exclude", excluded), ("methods", chosen)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise StudyError(f"{path}: {key} names unknown optimizers {unknown}; choose from {', '.join(known)}")
    workloads = tuple(_workload(path, str(name), spec) for name, spec in (raw.get("workloads") or {}).items())
    if not workloads:
        raise StudyError(f"{path}: workloads is empty; name at least one (e.g. mnist_mlp: {{overrides: [data=mnist]}})")
    tuning, final = dict(raw.get("tuning") or {}), dict(raw.get("final") or {})
    for key, node in (("tuning.trials", tuning.get("trials")), ("final.seeds", final.get("seeds"))):
        if not node:
            raise StudyError(f"{path}: {key} must be set (e.g. tuning.trials: 4, final.seeds: [0, 1, 2])")
    keys = tuning.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise StudyError(
            f"{path}: tuning.keys = {keys!r}: list the optimizer keys to tune (e.g. [learning_rate, damping]); "
            "without them every trial would run the same default"
        )
    spread = tuning.get("spread", 10.0)
    if not isinstance(spread, (int, float)) or isinstance(spread, bool) or not spread > 1:
        raise StudyError(
            f"{path}: tuning.spread = {spread!r}: a factor > 1 (each key is tuned in [v / spread, v * spread])"
        )
    startup = tuning.get("startup_trials", TPE_STARTUP_TRIALS)
    if not isinstance(startup, int) or isinstance(startup, bool) or startup < 0:
        raise StudyError(
            f"{path}: tuning.startup_trials = {startup!r}: the number of random trials before TPE models "
            f"the results, an integer >= 0 (default {TPE_STARTUP_TRIALS}, TPE's own)"
        )
    if str(final.get("launcher", SERIAL_LAUNCHER)) != SERIAL_LAUNCHER:
        raise StudyError(
            f"{path}: final.launcher = {final['launcher']!r}: the timed final runs must run one at a time "
            f"(launcher {SERIAL_LAUNCHER}); parallel jobs on one machine distort their time"
        )
    seeds = [int(x) for x in final["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: final.seeds = {final['seeds']} repeats a seed; list each once")
    if int(tuning.get("seed", TUNING_SEED)) in seeds:
        raise StudyError(
            f"{path}: tuning.seed = {tuning.get('seed', TUNING_SEED)} is one of final.seeds {seeds}: a final run "
            "would replay the trial it was selected on; choose a tuning seed outside them"
        )
    baselines = tuple(raw.get("target_baselines") or ("sgd",))
    missing = [b for b in baselines if b not in chosen or b in excluded]
    if missing:
        raise StudyError(f"{path}: target_baselines {missing} are not among the study's methods; the target needs them")
    metric = str(raw.get("target_metric", "val_acc"))
    if metric not in ("val_acc", "val_loss"):
        raise StudyError(f"{path}: target_metric = {metric!r}: choose val_acc or val_loss")
    if int(raw.get("validation_examples", 0)) < 1:
        raise StudyError(f"{path}: validation_examples must be >= 1 (tuning never uses the test set)")
    return Study(
        name=str(raw.get("name") or Path(path).stem),
        methods=tuple(m for m in chosen if m not in excluded),
        excluded=excluded,
        workloads=workloads,
        target_metric=metric,
        target_baselines=baselines,
        validation_examples=int(raw["validation_examples"]),
        batch_size=int(raw.get("batch_size", 64)),
        tuning=tuning,
        final=final,
        families={str(k): tuple(v) for k, v in (raw.get("families") or {}).items()},
    )


def _workload(path: Path, name: str, spec: Any) -> Workload:
    """One ``workloads.<name>`` entry: ``{overrides: [...], target: float | null}``."""
    if not isinstance(spec, Mapping):
        raise StudyError(
            f"{path}: workloads.{name} = {spec!r}: give its overrides and target "
            f"(e.g. {name}: {{overrides: [data=mnist, model=mlp], target: null}})"
        )
    unknown = sorted(set(spec) - {"overrides", "target"})
    if unknown:
        raise StudyError(f"{path}: workloads.{name} has unknown keys {unknown}; it takes overrides and target")
    overrides = spec.get("overrides") or []
    if not isinstance(overrides, list):
        raise StudyError(f"{path}: workloads.{name}.overrides = {overrides!r}: a list of Hydra overrides")
    target = spec.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise StudyError(
            f"{path}: workloads.{name}.target = {target!r}: a number, or null to set it from the baselines"
        )
    return Workload(name, tuple(map(str, overrides)), None if target is None else float(target))


def optimizer_defaults(method: str, config_dir: Path = CONFIGS) -> dict[str, Any]:
    node = yaml.safe_load((config_dir / "optimizer" / f"{method}.yaml").read_text()) or {}
    return dict(node.get("optimizer") or node)


def search_space(method: str, keys: Sequence[str], spread: float, config_dir: Path = CONFIGS) -> dict[str, tuple]:
    """``{"optimizer.<key>": (low, high)}`` for each tuned key the method's config sets to a positive number."""
    defaults = optimizer_defaults(method, config_dir)
    space = {}
    for key in keys:
        value = defaults.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
            space[f"optimizer.{key}"] = (float(value) / spread, float(value) * spread)
    return space


def sweeper_overrides(space: Mapping[str, tuple], tuning: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that make a multirun an Optuna search (hydra-optuna-sweeper, in-memory storage):
    the configured values first, then TPE (:class:`.sampler.CentreFirstSampler`)."""
    out = [
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=tpe",
        f"hydra.sweeper.sampler.seed={int(tuning.get('sampler_seed', 0))}",
        # TPE's random start-up trials (trial 0, the centre, counts among them): only when set, so that
        # folders tuned before the key existed keep their study_plan.yaml
        *(
            [f"hydra.sweeper.sampler.n_startup_trials={int(tuning['startup_trials'])}"]
            if "startup_trials" in tuning
            else []
        ),
        # trial 0 at the configured values (the centre of each range), then TPE (see .sampler)
        "hydra.sweeper.sampler._target_=second_order.suite.study.sampler.CentreFirstSampler",
        "hydra.sweeper.direction=minimize",
        f"hydra.sweeper.n_trials={int(tuning['trials'])}",
        f"hydra.sweeper.n_jobs={int(tuning.get('n_jobs', 1))}",
        *launcher_overrides(tuning),
    ]
    # A sweep override on the command line is the sweeper's search space (hydra-optuna-sweeper syntax).
    out += [f"{key}=tag(log, interval({lo:.6g}, {hi:.6g}))" for key, (lo, hi) in space.items()]
    return out


#: ``optuna.samplers.TPESampler``'s random start-up trials, the default of ``tuning.startup_trials``.
TPE_STARTUP_TRIALS = 10

#: The seed of every tuning trial (``tuning.seed``): outside ``final.seeds``, so that no final run
#: replays, for its first epochs, the very trial its parameters were selected on.
TUNING_SEED = 1000


def launcher_overrides(phase: Mapping[str, Any]) -> list[str]:
    """``hydra/launcher=<phase.launcher>`` when the study config names one; else the machine's default.

    The default is Hydra's basic launcher, or what ``configs/local/default.yaml`` picks (e.g.
    SLURM on a cluster): forcing basic there would not even compose with its SLURM keys.
    """
    return [f"hydra/launcher={phase['launcher']}"] if phase.get("launcher") else []


def common_overrides(study: Study, workload: Workload, phase: Mapping[str, Any]) -> list[str]:
    """The overrides every job of a phase (``study.tuning`` or ``study.final``) shares."""
    return [
        *workload.overrides,
        f"data.validation_examples={study.validation_examples}",
        f"trainer.batch_size={study.batch_size}",
        f"trainer.epochs={int(phase.get('epochs', 1))}",
        *([f"trainer.max_steps={int(phase['max_steps'])}"] if phase.get("max_steps") else []),  # smoke tests
        "trainer.progress=false",
        "logger.wandb.mode=disabled",
    ]
