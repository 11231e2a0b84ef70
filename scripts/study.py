#!/usr/bin/env python
"""The study: does second order pay off? Tune every method, time it to a target, report.

    python scripts/study.py                       # configs/study/cpu.yaml (make study): 25 min on 2 cores
    python scripts/study.py --study full          # configs/study/full.yaml: for a GPU or a cluster
    python scripts/study.py --phase report        # redraw results/study/ from the runs on disk
                                                  # (none under the root: an error, exit 1, nothing written)

Phases: ``tune`` (Optuna through Hydra, may run trials in parallel), ``final`` (the
timed runs, one at a time or each as a SLURM job: a launcher that runs jobs at once on
this machine is refused), ``report`` (results/study/). Every phase is resumable: run
the same command again after an interruption. Extra Hydra overrides after the options
go to every job and are part of each folder's ``study_plan.yaml`` (but for logging and
launcher keys: ``second_order.suite.study.runner.NOT_COMPARED``), so finished work made
without them is refused. ``data.dir`` is not one of them (each workload names its dataset):
use MNIST_DIR / FASHION_MNIST_DIR.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("tune", "final", "report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="cpu", help="a name in configs/study/ or a YAML path (default cpu)")
    p.add_argument("--root", type=Path, default=None, help="run directories (default runs/study/<name>)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "study", help="the report (default results/study)")
    p.add_argument("--phase", default=",".join(PHASES), help="comma-separated phases (default: all)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    return p.parse_args(argv)


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it (as the user would type it)."""
    from second_order.suite.cli import shown_path

    return shown_path(path, REPO)


def no_runs_message(args: argparse.Namespace, root: Path) -> str:
    """The one error line of ``--phase report`` without runs: the root, what was kept, how to make runs."""
    command = f"python scripts/study.py --study {args.study}"
    if args.root is not None:
        command += f" --root {args.root}"
    make = ", i.e. `make study`" if args.study == "cpu" and args.root is None else ""
    return (
        f"error: no runs found under {shown(root)}; nothing to report ({shown(args.out)} left as it is). "
        f"Produce them with `{command}` (every phase{make}), or give --root the directory that holds them"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from second_order.suite.study.plan import StudyError, load_study
    from second_order.suite.study.report import NoStudyRuns, write_report
    from second_order.suite.study.runner import run_study, train_multirun

    phases = [p for p in args.phase.split(",") if p]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"error: --phase {','.join(bad)}: choose from {', '.join(PHASES)}", file=sys.stderr)
        return 2
    path = (
        Path(args.study)
        if args.study.endswith((".yaml", ".yml"))
        else REPO / "configs" / "study" / f"{args.study}.yaml"
    )
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in (REPO / "configs" / "study").glob("*.yaml")))
        print(f"error: --study {args.study}: no such study config {shown(path)}; choose one of {names} "
              "(configs/study/) or give a YAML path", file=sys.stderr)  # fmt: skip
        return 2
    try:
        study = load_study(path)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = args.root or REPO / "runs" / "study" / study.name
    start = time.time()
    if "tune" in phases or "final" in phases:
        try:
            run_study(study, root, phases, run=train_multirun, extra=args.overrides)
        except StudyError as err:  # e.g. finished runs made with other settings (runner.check_plan)
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (subprocess.CalledProcessError, KeyboardInterrupt) as err:  # a signal (failures are left out)
            from second_order.suite.cli import child_failed

            code = err.returncode if isinstance(err, subprocess.CalledProcessError) else -signal.SIGINT
            return child_failed(code, "the study")
    if "report" in phases:
        try:
            written = write_report(study, root, args.out)
        except NoStudyRuns:
            print(no_runs_message(args, root), file=sys.stderr)
            return 1
        for path in written:
            print(f"wrote {path}")
    print(f"done: study {study.name} in {time.time() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
