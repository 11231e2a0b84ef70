#!/usr/bin/env python
"""Draw every figure and table of the report from finished run directories.

    python scripts/make_figures.py RUN_ROOT [RUN_ROOT ...] --out results/ [--smooth 50] [--log-loss]

Reads only what the trainer wrote (steps.csv, eval.csv, summary.json, config.yaml);
it never trains.  Prints each file it wrote and one warning line per paper method
without runs.
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path
from typing import Sequence

from second_order.report.figures import BANDS, MissingMethodWarning, make_all_figures
from second_order.report.style import METHODS
from second_order.report.tables import group_by_method, status_counts, write_all_tables
from second_order.runs import Run, find_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("roots", nargs="*", type=Path, metavar="RUN_ROOT", help="directories searched for run dirs")
    p.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results/)")
    p.add_argument("--smooth", type=int, default=50, help="moving-average window in steps; 1 = raw (default: 50)")
    p.add_argument("--log-loss", action="store_true", help="logarithmic loss axis")
    p.add_argument("--band", choices=BANDS, default="std", help="seed band: ±1 std or min-max (default: std)")
    p.add_argument("--experiment", help="use only runs of this experiment name (summary 'experiment')")
    # ---- W&B source ------------------------------------------------------------------
    # Downloads a W&B project into local run directories first, then proceeds as for
    # RUN_ROOTs.  The lead owns second_order.wandb_io; extend the options here.
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from this W&B project")
    p.add_argument("--wandb-group", metavar="G", help="only the W&B runs of this group")
    p.add_argument("--wandb-dir", type=Path, help="where W&B runs are written (default: OUT/runs/wandb)")
    # ------------------------------------------------------------------------------------
    return p


def fetch_wandb(project: str, group: str | None, out_root: Path) -> Path:
    """Download a W&B project as local run directories under ``out_root`` (lazy import)."""
    from second_order.wandb_io import download_project  # optional dependency, imported only here

    out_root.mkdir(parents=True, exist_ok=True)
    download_project(project, out_root, group)
    return out_root


def load(roots: Sequence[Path], experiment: str | None) -> list[Run]:
    """Find runs below ``roots``, warning about empty roots and mixed experiments."""
    runs: list[Run] = []
    for root in roots:
        found = find_runs([root])
        if not found:
            print(f"warning: no run directories (summary.json) under {root}", file=sys.stderr)
        runs += found
    if experiment is not None:
        return [r for r in runs if r.experiment == experiment]
    names = sorted({r.experiment for r in runs})
    if len(names) > 1:
        print(f"warning: runs of several experiments are pooled: {', '.join(names)} (use --experiment)", file=sys.stderr)
    return runs


def describe(runs: Sequence[Run]) -> None:
    """One line per method found, and one warning line per paper method missing."""
    groups = group_by_method(runs)
    for method, group in groups.items():
        seeds = ", ".join(str(r.seed) for r in group)
        print(f"found {method}: {len(group)} run(s) ({status_counts(group)}); seeds {seeds}")
    for method in METHODS:
        if method not in groups:
            print(f"warning: no runs for method '{method}'; it is left out of every figure", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.smooth < 1:
        print("error: --smooth must be >= 1", file=sys.stderr)
        return 2
    roots = list(args.roots)
    if args.wandb:
        try:
            roots.append(fetch_wandb(args.wandb, args.wandb_group, args.wandb_dir or args.out / "runs" / "wandb"))
        except ImportError as err:
            print(f"error: --wandb needs second_order.wandb_io and wandb ({err})", file=sys.stderr)
            return 2
    if not roots:
        print("error: give at least one RUN_ROOT or --wandb ENTITY/PROJECT", file=sys.stderr)
        return 2
    runs = load(roots, args.experiment)
    if not runs:
        print("error: no runs found; nothing to draw", file=sys.stderr)
        return 1
    describe(runs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingMethodWarning)
        written = make_all_figures(runs, args.out, smooth=args.smooth, log_loss=args.log_loss, band=args.band)
    for w in caught:
        if w.category is not MissingMethodWarning:  # record=True caught everything: pass the rest on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for message in dict.fromkeys(str(w.message) for w in caught if w.category is MissingMethodWarning):
        if ": no runs;" not in message:  # missing methods were already reported by describe()
            print(f"warning: {message}", file=sys.stderr)
    written += write_all_tables(runs, args.out)
    kinds = collections.Counter(p.suffix for p in written)
    for path in written:
        print(f"wrote {path}")
    print(f"done: {len(runs)} runs -> {args.out} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
