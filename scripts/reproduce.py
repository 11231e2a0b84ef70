#!/usr/bin/env python
"""Re-run every experiment of the paper, then regenerate its figures and tables.

    python scripts/reproduce.py            # CPU protocol (make reproduce), ≈ 11 min on 2 CPU cores
    python scripts/reproduce.py --full     # the paper's complete protocol for every method (a GPU)
    python scripts/reproduce.py --paper-precision   # + undamped Newton in the paper's precision (fig. 12)
    python scripts/reproduce.py --beyond-paper      # + LM damping, trust regions, saddle-free, parabola
    python scripts/reproduce.py --baselines         # + Adam, Sophia, AdaHessian, Shampoo, K-FAC
    python scripts/reproduce.py --curvature         # + Hessian / Gauss-Newton spectra along training

SGD, Hessian-free Newton and Hessian-free Gauss-Newton always run the full 7-epoch
protocol with seeds 0, 1, 2.  Exact Newton (undamped and damped) costs about a second
per step on a CPU, so by default each of its runs gets a step budget
(``--newton-steps``, 100) and stops there, marked ``budget`` in its summary and in the
figures.  A step budget, unlike a time budget, gives the same results on a busy
machine (``--newton-budget-s`` gives a time budget instead).  Every job runs with
``trainer.resume=true``: re-running continues
unfinished runs from their checkpoints (``--full`` after a CPU run extends the
budget-limited Newton runs to the full protocol) and leaves finished ones, and those
that ended on a budget this one does not extend, untouched.  A sweep goes on past a
failed job (train.py then exits 3, which reproduce goes on past); if any run failed (e.g.
no data), reproduce names it and stops before the figures, leaving ``--out`` as it is
(exit status 1).
Writes ``<out>/manifest.json`` (machine, versions, commit, wall time, budgets).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
FAST_METHODS = "sgd,hessian_free,gauss_newton"
NEWTON_METHODS = "newton,newton_damped"
PAPER_PRECISION = "newton_paper_precision"  # undamped Newton in the paper's precision (figure 12)
#: The methods of experiment=beyond_paper (configs/experiment/beyond_paper.yaml), full protocol.
BEYOND_PAPER = "hessian_free_lm,gauss_newton_lm,trust_region_cg,newton_lanczos,saddle_free_newton,online_parabola"
#: The methods of experiment=baselines (configs/experiment/baselines.yaml), full protocol.
BASELINES = "adam,sophia,adahessian,shampoo,kfac"
#: experiment=curvature (configs/experiment/curvature.yaml): spectra along training, one seed.
CURVATURE = "sgd,hessian_free,gauss_newton,gauss_newton_lm,saddle_free_newton,adam,kfac"
CURVATURE_SEED = "0"
CURVATURE_NEWTON_EVERY = 10  # exact Newton runs 100 steps (its budget): a measurement every 10


class Extra(NamedTuple):
    """An experiment beyond the paper's that a flag adds: ``configs/experiment/<experiment>.yaml``."""

    experiment: str
    flag: str  # --<flag> switches it on
    runs_flag: str  # --<runs_flag> DIR: where its run directories go (default runs/<experiment>)
    methods: str  # the optimizers it sweeps
    about: str  # what it adds, for --help
    seeds: str | None = None  # None: --seeds
    newton_every: int | None = None  # also exact Newton (its budget), measured every this many steps

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def runs_dest(self) -> str:
        return self.runs_flag.replace("-", "_")


EXTRAS = (
    Extra(
        "beyond_paper",
        "beyond-paper",
        "beyond-runs",
        BEYOND_PAPER,
        "LM damping, trust regions, saddle-free Newton, online parabola",
    ),
    Extra("baselines", "baselines", "baselines-runs", BASELINES, "Adam, Sophia, AdaHessian, Shampoo, K-FAC"),
    Extra(
        "curvature",
        "curvature",
        "curvature-runs",
        CURVATURE,
        "Hessian and Gauss-Newton spectra along training, seed 0",
        seeds=CURVATURE_SEED,
        newton_every=CURVATURE_NEWTON_EVERY,
    ),
)


def extras_on(args: argparse.Namespace) -> list[tuple[Extra, Path]]:
    """The extra experiments switched on, each with its run root."""
    return [(e, getattr(args, e.runs_dest)) for e in EXTRAS if getattr(args, e.dest)]


def sweep(run_root: Path, optimizers: str, seeds: str, extra: list[str], experiment: str = "paper") -> None:
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "-m",
        f"experiment={experiment}",
        f"optimizer={optimizers}",
        f"seed={seeds}",
        "trainer.resume=true",
        "trainer.progress=false",
        f"hydra.sweep.dir={run_root}",
        *extra,
    ]
    print("+", " ".join(cmd[1:]), flush=True)
    from second_order.suite.sweep import run_multirun

    run_multirun(cmd, cwd=REPO)  # failed jobs: named by failed_runs before any figure


def newton_overrides(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The exact-Newton jobs' overrides: a step budget by default (machine-load independent)."""
    if args.full:
        return extra
    budget = (
        [f"trainer.max_time_s={args.newton_budget_s}"]
        if args.newton_budget_s is not None
        else [f"trainer.max_steps={min(args.newton_steps, args.max_steps or args.newton_steps)}"]
    )
    return [e for e in extra if not e.startswith("trainer.max_steps=")] + budget


def seed_list(text: str) -> str:
    """``--seeds``: comma-separated integers >= 0, as Hydra's sweep takes them."""
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers >= 0, e.g. 0,1,2")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="no budget: the paper's full protocol for Newton too")
    parser.add_argument(
        "--newton-steps",
        type=int,
        default=100,
        help="optimizer steps per exact-Newton run without --full (default 100; ≈ 80 s each on a CPU)",
    )
    parser.add_argument(
        "--newton-budget-s",
        type=float,
        default=None,
        help="optimizer seconds per exact-Newton run instead of a step budget (results then depend on load)",
    )
    parser.add_argument(
        "--paper-precision",
        action="store_true",
        help="also run undamped Newton in the paper's precision (first step float32, then float64 parameters)",
    )
    for e in EXTRAS:
        parser.add_argument(f"--{e.flag}", action="store_true", help=f"also run experiment={e.experiment} ({e.about})")
        parser.add_argument(
            f"--{e.runs_flag}", type=Path, default=REPO / "runs" / e.experiment, help=f"run directories of --{e.flag}"
        )
    parser.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "paper", help="where run directories go")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="figures, tables and manifest")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke tests)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (e.g. data.dir=...)")
    return parser.parse_args(argv)


def make_command(args: argparse.Namespace) -> str:
    """The make command line that repeats this run's protocol (``make reproduce ARGS="--baselines"``)."""
    flags = (["--paper-precision"] if args.paper_precision else []) + [f"--{e.flag}" for e, _ in extras_on(args)]
    return "make reproduce" + (" FULL=1" if args.full else "") + (f' ARGS="{" ".join(flags)}"' if flags else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from second_order.suite.cli import child_failed

    try:
        return reproduce(args)
    except subprocess.CalledProcessError as err:  # the job printed its own error above
        return child_failed(err.returncode, "a training sweep")
    except KeyboardInterrupt:
        return child_failed(-signal.SIGINT, "make reproduce")


def reproduce(args: argparse.Namespace) -> int:
    """Every sweep the flags ask for, then the figures, tables and manifest (never timed at once)."""
    from second_order.suite.launchers import LauncherError, jobs_at_once

    try:
        at_once = jobs_at_once(args.overrides)
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if at_once:
        print(f"error: {at_once}: the timed runs (the figures per optimizer-second) would share its cores and "
              "distort each other's seconds; run with hydra/launcher=basic (one job after another) or as SLURM "
              "jobs (hydra/launcher=slurm_gpu)", file=sys.stderr)  # fmt: skip
        return 2
    start = time.time()
    extra = list(args.overrides) + ([f"trainer.max_steps={args.max_steps}"] if args.max_steps else [])
    sweep(args.runs, FAST_METHODS, args.seeds, extra)
    newton_extra = newton_overrides(args, extra)
    sweep(args.runs, NEWTON_METHODS, args.seeds, newton_extra)
    if args.paper_precision:
        sweep(args.runs, PAPER_PRECISION, args.seeds, newton_extra)
    for e, root in extras_on(args):
        seeds = e.seeds or args.seeds
        sweep(root, e.methods, seeds, extra, experiment=e.experiment)
        if e.newton_every is not None:
            every = [f"diagnostics.every_steps={e.newton_every}"] if not args.full else []
            sweep(root, NEWTON_METHODS, seeds, newton_extra + every, experiment=e.experiment)
    train_wall = time.time() - start
    failed = failed_runs(run_roots(args))
    if failed:  # a sweep goes on past a failed job: never draw over the committed results with them
        from second_order.suite.cli import shown_path

        first, why = failed[0]
        print(f"error: {len(failed)} run(s) failed, e.g. {first}: {why}; {shown_path(args.out, REPO)} left as it "
              "is. Fix the cause and run the same command again (finished runs are kept), or draw what there is "
              "with make figures", file=sys.stderr)  # fmt: skip
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_figures.py"), *map(str, run_roots(args)), "--out", str(args.out)],
        cwd=REPO,
        check=True,
    )
    write_manifest(args, train_wall, time.time() - start)
    return 0


def failed_runs(roots: list[Path]) -> list[tuple[str, str]]:
    """``(run directory, error)`` of every run under ``roots`` (sweep directories) that says ``failed``."""
    from second_order.suite.cli import shown_path
    from second_order.suite.sweep import sweep_status

    return [
        (shown_path(root / row["run_dir"], REPO), str(row.get("error") or "no error recorded"))
        for root in roots
        if root.is_dir()
        for row in sweep_status(root)
        if row["status"] == "failed"
    ]


def run_roots(args: argparse.Namespace) -> list[Path]:
    """The run roots this invocation fills (the figures and the manifest read all of them)."""
    return [args.runs] + [root for _, root in extras_on(args)]


def write_manifest(args: argparse.Namespace, train_wall_s: float, total_wall_s: float) -> None:
    from second_order.suite.tracking import environment, runs

    jobs = [
        {
            "run_dir": str(r.path.relative_to(REPO)) if r.path.is_relative_to(REPO) else str(r.path),
            **{
                k: r.summary.get(k)
                for k in (
                    "optimizer",
                    "seed",
                    "status",
                    "steps",
                    "train_time_s",
                    "compile_time_s",
                    "test_acc",
                    "train_loss",
                    "x64",
                    "segments",
                )
            },
        }
        for r in runs.find_runs(run_roots(args))
    ]
    manifest = {
        "command": make_command(args),
        "protocol": "full"
        if args.full
        else "cpu: exact Newton budget "
        + (
            f"{args.newton_budget_s:g} optimizer-s per run"
            if args.newton_budget_s is not None
            else f"{args.newton_steps} steps per run"
        ),
        "seeds": args.seeds,
        "max_steps": args.max_steps,
        "overrides": args.overrides,
        "wall_time_s": {"training": round(train_wall_s, 1), "total": round(total_wall_s, 1)},
        # the machine and versions of this process; each run's own record (x64, devices,
        # every resumed segment) is in its summary.json and environment.json
        "environment": {k: v for k, v in environment.record().items() if k != "x64"},
        "runs": jobs,
    }
    runs.write_json(args.out / "manifest.json", manifest)
    print(f"wrote {args.out / 'manifest.json'} (total wall time {total_wall_s / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
