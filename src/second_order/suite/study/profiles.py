"""Performance profiles (Dolan & Moré 2002, "Benchmarking optimization software with performance profiles").

For methods ``m`` and problems ``p`` (here: workloads) with costs ``t[m, p]`` (time to
target; ``inf`` when missed), the performance ratio is ``r[m, p] = t[m, p] / min_m t[m, p]``
and the profile of method ``m`` is

    ρ_m(τ) = |{p : r[m, p] ≤ τ}| / |P|,

the fraction of problems it solves within a factor ``τ`` of the best method.
``ρ_m(1)`` is the fraction of problems on which ``m`` is fastest; ``ρ_m(τ → ∞)`` the
fraction it solves at all.  A problem no method solves counts as unsolved for every
method.  A best time of 0 (the target met at the first evaluation) gives ratio 1 to
the methods with time 0 and ``inf`` to the others: a ratio of 0/0 is a tie, t/0 is
unbounded.  AlgoPerf draws the same curves for τ from 1 to 4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def performance_ratios(costs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``r[m][p] = t[m][p] / min_m t[m][p]``; ``inf`` where ``m`` missed or no method solved ``p``."""
    problems = sorted({p for per in costs.values() for p in per})
    best = {p: min((per.get(p, np.inf) for per in costs.values()), default=np.inf) for p in problems}
    ratios: dict[str, dict[str, float]] = {}
    for method, per in costs.items():
        ratios[method] = {}
        for p in problems:
            ratios[method][p] = _ratio(float(per.get(p, np.inf)), best[p])
    return ratios


def _ratio(t: float, best: float) -> float:
    if not (np.isfinite(t) and np.isfinite(best)):
        return np.inf
    if best <= 0:
        return 1.0 if t <= best else np.inf
    return t / best


def performance_profile(
    costs: Mapping[str, Mapping[str, float]], taus: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """``ρ_m(τ)`` for each method at each ``τ`` in ``taus``."""
    ratios = performance_ratios(costs)
    taus = np.asarray(taus, dtype=float)
    profile: dict[str, np.ndarray] = {}
    for method, per in ratios.items():
        r = np.array(list(per.values()), dtype=float)
        profile[method] = (r[None, :] <= taus[:, None]).mean(axis=1) if r.size else np.zeros_like(taus)
    return profile
