#!/usr/bin/env python
"""Draw every figure and table of the report from finished run directories.

    python scripts/make_figures.py RUN_ROOT [RUN_ROOT ...] --out results/ [--smooth 50] [--log-loss]

Reads only what the trainer wrote (steps.csv, eval.csv, summary.json, config.yaml);
it never trains.  Runs are grouped by optimizer and config (seeds of one experiment
per group; see second_order.suite.report.grouping).  Prints each file it wrote and
one warning line per problem: a paper method without runs (its figures are
skipped), an unreadable run or torn CSV row (skipped, the rest is drawn), a run
trained on several devices (left out of time axes), runs that ran at once on one
machine (their seconds are not comparable; second_order.suite.report.overlaps).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from second_order.suite.report.figures import BANDS, make_all_figures
from second_order.suite.report.grouping import group_runs
from second_order.suite.report.loading import ReportWarning, load_runs
from second_order.suite.report.overlaps import overlaps
from second_order.suite.report.runinfo import status_counts
from second_order.suite.report.spectra import split_measured
from second_order.suite.report.style import METHODS
from second_order.suite.report.tables import write_all_tables
from second_order.suite.tracking.runs import Run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("roots", nargs="*", type=Path, metavar="RUN_ROOT", help="directories searched for run dirs")
    p.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results/)")
    p.add_argument("--smooth", type=int, default=50, help="moving-average window in steps; 1 = raw (default: 50)")
    p.add_argument("--log-loss", action="store_true", help="logarithmic loss axis")
    p.add_argument("--band", choices=BANDS, default="std", help="seed band: ±1 std or min-max (default: std)")
    p.add_argument("--experiment", help="use only runs of this experiment name (summary 'experiment')")
    # W&B sources: converted into local run directories first, then read like RUN_ROOTs.
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from this W&B project (full history)")
    p.add_argument("--wandb-group", metavar="G", help="only the W&B runs of this group")
    p.add_argument(
        "--wandb-offline",
        metavar="DIR",
        type=Path,
        help="also read W&B offline runs (wandb/offline-run-* folders) found below DIR",
    )
    p.add_argument("--wandb-dir", type=Path, help="where W&B runs are written (default: OUT/runs/wandb)")
    return p


def fetch_wandb(project: str, group: str | None, out_root: Path) -> Path:
    """Download a W&B project as local run directories under ``out_root`` (lazy import)."""
    from second_order.suite.tracking.wandb_convert import download_project  # optional dependency, imported only here

    out_root.mkdir(parents=True, exist_ok=True)
    download_project(project, out_root, group)
    return out_root


def convert_wandb_offline(root: Path, out_root: Path) -> Path:
    """Every run dir below ``root`` holding ``wandb/offline-run-*`` → a local run dir under ``out_root``."""
    from second_order.suite.tracking.wandb_convert import record_to_run_dir
    from second_order.suite.tracking.wandb_io import read_offline_runs

    run_dirs = sorted({p.parent.parent for p in root.rglob("offline-run-*") if p.parent.name == "wandb"})
    if not run_dirs:
        raise FileNotFoundError(f"no W&B offline runs (wandb/offline-run-*) below {root}")
    for run_dir in run_dirs:
        record = read_offline_runs(run_dir)
        record_to_run_dir(record, out_root / run_dir.relative_to(root))
    return out_root


_PRINTED: set[str] = set()  # warnings already printed by this build


@contextlib.contextmanager
def warning_lines() -> Iterator[None]:
    """Print each distinct report warning once, as one ``warning: ...`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        yield
    for w in caught:
        if not issubclass(w.category, ReportWarning):  # record=True caught everything: pass the rest on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ReportWarning)):
        if ": no runs;" not in message and message not in _PRINTED:  # missing methods: see describe()
            print(f"warning: {message}", file=sys.stderr)
            _PRINTED.add(message)


def drop_wandb_copies(runs: Sequence[Run]) -> list[Run]:
    """The runs without a second copy of one W&B run (same ``wandb_run_id``): the first read is kept.

    The run roots are read before the W&B sources, so a run given both as run files and
    through ``--wandb`` / ``--wandb-offline`` is drawn once, from its run files.
    """
    seen: set[str] = set()
    unique: list[Run] = []
    for run in runs:
        run_id = run.summary.get("wandb_run_id")
        if run_id and run_id in seen:
            continue
        if run_id:
            seen.add(run_id)
        unique.append(run)
    if len(unique) < len(runs):
        print(
            f"warning: {len(runs) - len(unique)} run(s) were read twice (run files and W&B, same wandb_run_id); "
            "each is drawn once, from its run files",
            file=sys.stderr,
        )
    return unique


def load(roots: Sequence[Path], experiment: str | None) -> list[Run]:
    """Find runs below ``roots``, warning about empty roots, bad runs, copies and mixed experiments."""
    runs: list[Run] = []
    with warning_lines():
        for root in roots:
            found = load_runs([root])
            if not Path(root).exists():
                print(f"warning: {root} does not exist (a typo, or runs not made yet?)", file=sys.stderr)
            elif not found:
                print(f"warning: no usable run directories (summary.json) under {root}", file=sys.stderr)
            runs += found
    runs = drop_wandb_copies(runs)
    if experiment is not None:
        return [r for r in runs if r.experiment == experiment]
    with warning_lines():  # grouping warns too (a run without config.yaml): one line each, once
        groups = group_runs(runs)
    for group in groups:  # seeds of one configuration from different experiments: say so
        names = sorted({str(r.experiment) for r in group.runs})
        if len(names) > 1:
            print(
                f"warning: {group.style.label}: runs of several experiments are pooled: {', '.join(names)} "
                "(use --experiment)",
                file=sys.stderr,
            )
    return runs


SHOWN_OVERLAPS = 5  # pairs of runs that ran at once named one by one; the rest counted


def describe(runs: Sequence[Run]) -> None:
    """One line per group of runs found, and one warning line per paper method missing."""
    groups = group_runs(runs)
    for group in groups:
        seeds = ", ".join(str(r.seed) for r in group.runs)
        budgets = f"; budget {group.budgets()}" if group.budgets() else ""
        print(f"found {group.label}: {len(group.runs)} run(s) ({status_counts(group.runs)}); seeds {seeds}{budgets}")
    present = {g.optimizer for g in groups}
    for method in METHODS:
        if method not in present:
            print(f"warning: no runs for method '{method}'; its figures are skipped", file=sys.stderr)
    shared = overlaps(runs)
    for o in shared[:SHOWN_OVERLAPS]:
        print(f"warning: {o.describe()}: their times (per optimizer-second, per step) are not comparable",
              file=sys.stderr)  # fmt: skip
    if len(shared) > SHOWN_OVERLAPS:
        print(f"warning: and {len(shared) - SHOWN_OVERLAPS} more pair(s) of runs ran at once", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    _PRINTED.clear()
    if args.smooth < 1:
        print("error: --smooth must be >= 1", file=sys.stderr)
        return 2
    roots = list(args.roots)
    wandb_dir = args.wandb_dir or args.out / "runs" / "wandb"
    try:
        if args.wandb:
            roots.append(fetch_wandb(args.wandb, args.wandb_group, wandb_dir / "online"))
        if args.wandb_offline:
            roots.append(convert_wandb_offline(args.wandb_offline, wandb_dir / "offline"))
    except Exception as err:  # no network, no credentials, no such project, no files: one line
        print(f"error: reading W&B runs failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if not roots:
        print("error: give at least one RUN_ROOT, --wandb ENTITY/PROJECT or --wandb-offline DIR", file=sys.stderr)
        return 2
    runs = load(roots, args.experiment)
    if not runs:
        print("error: no runs found; nothing to draw", file=sys.stderr)
        return 1
    plain, measured = split_measured(runs)
    with warning_lines():
        describe(plain)
        for group in group_runs(measured):
            print(f"found {group.label} with curvature measurements (figures 21-22 only): {len(group.runs)} run(s)")
    with warning_lines():
        written = make_all_figures(runs, args.out, smooth=args.smooth, log_loss=args.log_loss, band=args.band)
        written += write_all_tables(plain, args.out)
    kinds = collections.Counter(p.suffix for p in written)
    for path in written:
        print(f"wrote {path}")
    print(f"done: {len(runs)} runs -> {args.out} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
