"""The benchmark's settings: one frozen dataclass, built once from the arguments and the configs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: int
    skip_slow: bool
    cap_s: float  # a measurement expected to take longer than this is skipped
    slow_budget_s: float  # slow measurements: stop repeating once this much was spent
    min_total_s: float  # fast functions: repeat until this many seconds were spent
    paper_hidden: int  # the configs' model.hidden[0] (epoch and baseline sections)
    num_classes: int  # the configs' model.num_classes
    part_hidden: int  # hidden width of the "paper size" section (--quick: 2)
    batch: int  # the configs' trainer.batch_size
    cg_batches: int  # batches for the CG iteration statistics
    run_steps: int  # consecutive steps timed as one scan (a method's mean step, periodic work included)
    sgd_steps: int  # SGD steps before the "trained" CG statistics
    epoch_steps: int  # steps of the trainer/yardstick comparison
    trainer_repeats: int
    eager_steps: int  # steps of the eager-CG baseline
    newton_base_hidden: int  # width at which the baseline Newton (jax.hessian + pinv) runs
    newton_base_steps: int
    widths: tuple[int, ...]
    batches: tuple[int, ...]
    eigh: bool
    newton_step: bool  # measure the undamped (eigh) Newton step once
    baseline_newton_full: bool  # one baseline Newton step (jax.hessian + pinv) at the paper's size
    low_rank_max_rank: int | None  # --low-rank-max-rank


def make_settings(args: argparse.Namespace, cfg: Mapping[str, Any], n_train: int) -> Settings:
    """Settings from the command line and the composed base config (model and trainer nodes)."""
    q = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if q else 5)
    hidden = int(cfg["model"]["hidden"][0])
    batch = int(cfg["trainer"]["batch_size"])
    epoch = n_train // batch
    return Settings(
        quick=q,
        repeats=max(1, repeats),
        skip_slow=args.skip_slow,
        cap_s=60.0 if args.skip_slow else args.max_measure_s,
        slow_budget_s=5.0 if q else 30.0,
        min_total_s=0.1 if q else 0.3,
        paper_hidden=hidden,
        num_classes=int(cfg["model"]["num_classes"]),
        part_hidden=2 if q else hidden,
        batch=batch,
        cg_batches=2 if q else 8,
        run_steps=20 if q else 100,
        sgd_steps=100 if q else epoch,
        epoch_steps=50 if q else epoch,
        trainer_repeats=1 if q else 2,
        eager_steps=2 if q else 20,
        newton_base_hidden=1 if q else 2,
        newton_base_steps=3 if q else 4,
        widths=tuple(args.widths) if args.widths else ((1, 2) if q else (10, 32, 64, 128)),
        batches=tuple(args.batches) if args.batches else ((batch,) if q else (batch, 4 * batch, 16 * batch)),
        eigh=not (q or args.skip_slow) and args.eigh,
        newton_step=args.newton_step and not args.skip_slow,
        baseline_newton_full=args.baseline_newton_full and not (q or args.skip_slow),
        low_rank_max_rank=args.low_rank_max_rank,
    )
