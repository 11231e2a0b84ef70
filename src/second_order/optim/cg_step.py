"""Martens's (2010) options of a Hessian-free CG step: their validation and CG backtracking.

The step itself is :func:`second_order.optim.base.cg_transformation`; this module holds
what it needs beyond plain CG: the checked options (:class:`CGOptions`), the
iterations whose CG iterates are kept for backtracking (:func:`backtrack_iterations`)
and the backward search over them (:func:`backtrack`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from second_order.optim.levenberg_marquardt import (
    DAMPING_ADAPTATIONS,
    DEFAULT_MIN_DAMPING,
    LEVENBERG_MARQUARDT,
    LM_MODELS,
    UNDAMPED,
)
from second_order.solvers import CGResult

PyTree = Any

#: Martens's (2010, §4.6) spacing of the kept CG iterates: iterations ⌈γʲ⌉.
BACKTRACK_GAMMA = 1.3


def _options_text(values: tuple[Any, ...]) -> str:
    return ", ".join(repr(v) for v in values)


class CGOptions(NamedTuple):
    """The optional parts of a CG step (all off by default: plain damped CG from 0).

    ``damping_adaptation``: ``None`` or ``"levenberg_marquardt"``; ``lm_model``:
    ``"undamped"`` or ``"damped"`` (the model ρ divides by); ``min_damping``: lower
    bound of the adapted λ; ``warm_start``: ζ, CG starts at ζ·(previous CG solution),
    ``None`` at 0; ``progress_tol``: ε of Martens's relative-progress stopping rule,
    ``None`` off; ``backtracking``: choose among geometrically spaced CG iterates the
    one with the best mini-batch loss.
    """

    damping_adaptation: str | None = None
    lm_model: str = UNDAMPED
    min_damping: Any = DEFAULT_MIN_DAMPING
    warm_start: Any = None
    progress_tol: Any = None
    backtracking: bool = False

    @property
    def adaptive(self) -> bool:
        return self.damping_adaptation == LEVENBERG_MARQUARDT

    @property
    def plain(self) -> bool:
        """No option that needs state (the progress rule does not): the state is a plain ``SecondOrderState``."""
        return not (self.adaptive or self.warm_start is not None or self.backtracking)

    @property
    def needs_value_fn(self) -> bool:
        return self.adaptive or self.backtracking

    def check(self, name: str, concrete_float: Callable[[Any], float | None]) -> CGOptions:
        """Raise ``ValueError("<name>: <key> must …, got …")`` for a bad option; return self.

        Numbers are checked only when concrete (under ``optax.inject_hyperparams`` they
        arrive traced in ``update``; they were checked at ``init``).
        """
        if self.damping_adaptation not in DAMPING_ADAPTATIONS:
            raise ValueError(
                f"{name}: damping_adaptation must be one of {_options_text(DAMPING_ADAPTATIONS)}, "
                f"got {self.damping_adaptation!r}"
            )
        if self.lm_model not in LM_MODELS:
            raise ValueError(f"{name}: lm_model must be one of {_options_text(LM_MODELS)}, got {self.lm_model!r}")
        if not isinstance(self.backtracking, bool):
            raise ValueError(f"{name}: backtracking must be True or False, got {self.backtracking!r}")
        low = concrete_float(self.min_damping)
        if low is not None and not low > 0:
            raise ValueError(f"{name}: min_damping must be > 0, got {self.min_damping}")
        zeta = None if self.warm_start is None else concrete_float(self.warm_start)
        if zeta is not None and not 0.0 <= zeta <= 1.0:
            raise ValueError(f"{name}: warm_start must lie in [0, 1] or be None, got {self.warm_start}")
        eps = None if self.progress_tol is None else concrete_float(self.progress_tol)
        if eps is not None and not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"{name}: progress_tol must be > 0 or None, got {self.progress_tol}")
        return self


def backtrack_iterations(cap: int, gamma: float = BACKTRACK_GAMMA) -> tuple[int, ...]:
    """The distinct iterations ``⌈γʲ⌉ ≤ cap``, j = 0, 1, … (1, 2, 3, 4, 5, 7, 9, 11, 14, … for γ = 1.3)."""
    out: list[int] = []
    j = 0
    while True:
        it = math.ceil(round(gamma**j, 9))  # round: 1.3**j's representation error must not add an iteration
        if it > cap:
            return tuple(out)
        if not out or it > out[-1]:
            out.append(it)
        j += 1


def trial_params(params: PyTree, direction: PyTree, learning_rate: jax.Array) -> PyTree:
    """``w − η d`` exactly as the step applies it (update cast to each parameter's dtype, then added)."""
    return jax.tree_util.tree_map(lambda p, d: p + (-learning_rate * d).astype(p.dtype), params, direction)


class Backtracked(NamedTuple):
    """Outcome of :func:`backtrack`: the chosen ``direction``, its loss ``value`` and CG ``iteration``."""

    direction: PyTree
    value: jax.Array
    iteration: jax.Array


def backtrack(
    value_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    learning_rate: jax.Array,
    res: CGResult,
    save_at: tuple[int, ...],
) -> Backtracked:
    """Martens's (2010, §4.6) CG backtracking over the iterates ``res.saved`` kept at ``save_at``.

    Candidates are the final iterate and the kept ones of earlier iterations.  Going
    backwards from the final one, the next earlier candidate replaces the current one
    while its loss ``f(w − η xⱼ)`` on the mini-batch is strictly lower (a non-finite
    loss counts as +inf); the walk stops at the first candidate that is not better.
    Cost: one ``value_fn`` evaluation for the final iterate and one per step of the
    walk (at least one more when an earlier candidate exists), in a
    ``lax.while_loop``.  ``value`` is the loss of the chosen candidate (reused for ρ).
    """
    if not save_at:
        raise ValueError("backtrack: save_at must name at least one iteration")
    kept = jnp.asarray(save_at, jnp.int32)
    earlier = jnp.sum(kept < res.iterations).astype(jnp.int32)  # candidates 0 … earlier−1 are valid
    last = len(save_at)  # index of the final iterate

    def loss(d: PyTree) -> jax.Array:
        return value_fn(trial_params(params, d, learning_rate))

    def order(f: jax.Array) -> jax.Array:
        return jnp.where(jnp.isfinite(f), f, jnp.inf)

    def saved(j: jax.Array) -> PyTree:
        return jax.tree_util.tree_map(lambda s: s[j], res.saved)

    def cond(carry):
        j, _, _, done = carry
        return (j >= 0) & ~done

    def body(carry):
        j, best, f_best, _ = carry
        f_j = loss(saved(j))
        better = order(f_j) < order(f_best)
        return j - 1, jnp.where(better, j, best), jnp.where(better, f_j, f_best), ~better

    f_last = loss(res.x)
    init = (earlier - 1, jnp.int32(last), f_last, jnp.array(False))
    _, best, f_best, _ = jax.lax.while_loop(cond, body, init)
    chosen = saved(jnp.minimum(best, last - 1))
    direction = jax.tree_util.tree_map(lambda s, x: jnp.where(best == last, x, s), chosen, res.x)
    iteration = jnp.where(best == last, res.iterations, kept[jnp.minimum(best, last - 1)])
    return Backtracked(direction, f_best, iteration)
