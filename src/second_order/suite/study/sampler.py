"""The study's Optuna sampler: the configured value first, then TPE.

The study tunes each key log-uniformly in ``[v / spread, v · spread]`` around its
``configs/optimizer/<name>.yaml`` value ``v`` (:func:`.plan.search_space`), so the centre
of every range, ``√(low · high)`` (``(low + high) / 2`` on a linear range), is that value.
:class:`CentreFirstSampler` gives trial 0 the centre of every range and hands every later
trial to ``optuna.samplers.TPESampler``: with a small budget (fewer trials than TPE's
random start-up ones) the search would otherwise never try the default it is centred on.
Optuna's ``enqueue_trial`` does the same for a study object, which hydra-optuna-sweeper
keeps to itself; a sampler is what its config can name (``hydra.sweeper.sampler._target_``).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution


def centre(distribution: BaseDistribution) -> Any:
    """The middle of a range: geometric on a log scale, arithmetic otherwise (the first choice of a categorical).

    Written against optuna 2.10 (what hydra-optuna-sweeper 1.2 pins: ``LogUniformDistribution``,
    ``IntUniformDistribution``, ...) and 3.x (``FloatDistribution(log=...)``) alike.
    """
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    ranged: Any = distribution  # a float or int range, whatever its class in this optuna version
    low, high = float(ranged.low), float(ranged.high)
    name = type(distribution).__name__
    log = bool(getattr(distribution, "log", False)) or "LogUniform" in name
    mid = math.sqrt(low * high) if log else (low + high) / 2
    return int(round(mid)) if name.startswith("Int") else mid


class CentreFirstSampler(optuna.samplers.BaseSampler):
    """Trial 0 at the centre of every range, then ``TPESampler(seed=seed, **tpe_options)``."""

    def __init__(self, seed: int | None = None, **tpe_options: Any) -> None:
        self._tpe = optuna.samplers.TPESampler(seed=seed, **tpe_options)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, BaseDistribution]:
        return {} if trial.number == 0 else self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, BaseDistribution]) -> dict:
        return {} if trial.number == 0 else self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, distribution: BaseDistribution) -> Any:
        if trial.number == 0:
            return centre(distribution)
        return self._tpe.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()
