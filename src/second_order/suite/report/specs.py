"""Which figures the report draws: one :class:`FigureSpec` per output file.

The paper's slides 1-11 (each method beside the SGD baseline, against step, optimizer
time and epoch), an overview of every optimizer found, and figures beyond the paper,
drawn only when their methods have runs (``requires``).
"""

from __future__ import annotations

import dataclasses

BASELINE = "sgd"  # drawn in every paper figure beside the featured method(s)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One output figure: file name, x axis kind, methods drawn (None: all), paper slide."""

    name: str
    kind: str  # "step" | "time" | "epoch"
    methods: tuple[str, ...] | None
    slide: int | None = None
    log_time: bool = False
    requires: tuple[str, ...] = ()  # figures beyond the paper: drawn only when one of these has runs
    loss_cap: float | None = None  # a log loss axis cut at loss_cap x the initial loss (diverging lines leave it)

    @property
    def featured(self) -> tuple[str, ...]:
        """The methods the figure is about (all but the SGD baseline); empty for the overview."""
        return tuple(m for m in self.methods or () if m != BASELINE) or tuple(self.methods or ())

    def skipped_because(self, present: set[str]) -> str | None:
        """Why the figure cannot be drawn from runs of ``present`` methods, or None."""
        if self.methods is not None and not present & set(self.featured):
            return f"no runs of {' or '.join(self.featured)}"
        if self.requires and not present & set(self.requires):
            return f"no runs of {' or '.join(self.requires)}"
        return None


def _pair(slide: int, kind: str, other: tuple[str, ...]) -> FigureSpec:
    what = {"step": "loss_vs_step", "time": "loss_vs_time", "epoch": "acc_vs_epoch"}[kind]
    return FigureSpec(f"fig{slide:02d}_{what}_{other[-1]}", kind, (BASELINE,) + other, slide)


_LM = ("hessian_free_lm", "gauss_newton_lm")
_TR = ("trust_region_cg", "newton_lanczos", "saddle_free_newton")

FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig00_overview_loss_vs_time", "time", None, None, log_time=True, loss_cap=3.0),  # every optimizer
    _pair(1, "step", ("newton",)),
    _pair(2, "time", ("newton",)),
    _pair(3, "step", ("newton_damped",)),
    _pair(4, "time", ("newton_damped",)),
    _pair(5, "epoch", ("newton_damped",)),
    _pair(6, "step", ("hessian_free",)),
    _pair(7, "time", ("hessian_free",)),
    _pair(8, "epoch", ("hessian_free",)),
    _pair(9, "step", ("hessian_free", "gauss_newton")),
    _pair(10, "time", ("hessian_free", "gauss_newton")),
    _pair(11, "epoch", ("hessian_free", "gauss_newton")),
    # Beyond the paper: what its precision (first step float32, then float64 parameters)
    # does to undamped Newton; drawn when `reproduce.py --paper-precision` was run.
    FigureSpec(
        "fig12_loss_vs_step_newton_precision",
        "step",
        ("newton", "newton_paper_precision"),
        requires=("newton_paper_precision",),
    ),
    # experiment=beyond_paper (fig13/fig14, the trajectories of λ, Δ and ρ, are in .trajectories):
    # Levenberg-Marquardt damping beside the fixed damping of the paper's Hessian-free methods ...
    *(FigureSpec(f"fig{n}_{what}_lm", kind, (BASELINE, "hessian_free", "gauss_newton", *_LM), requires=_LM)
      for n, what, kind in ((15, "loss_vs_step", "step"), (16, "loss_vs_time", "time"))),
    # ... trust regions and saddle-free Newton beside damped Newton (undamped Newton's 10⁷ would flatten them) ...
    *(FigureSpec(f"fig{n}_{what}_trust_region", kind, (BASELINE, "newton_damped", *_TR), requires=_TR)
      for n, what, kind in ((17, "loss_vs_step", "step"), (18, "loss_vs_time", "time"))),
    # ... the online parabola beside SGD, and every new method's test accuracy.
    FigureSpec("fig19_loss_vs_step_online_parabola", "step", (BASELINE, "online_parabola"),
               requires=("online_parabola",)),
    FigureSpec("fig20_acc_vs_epoch_beyond_paper", "epoch", (BASELINE, *_LM, *_TR, "online_parabola"),
               requires=(*_LM, *_TR, "online_parabola")),
)  # fmt: skip
