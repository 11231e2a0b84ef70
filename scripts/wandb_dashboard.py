#!/usr/bin/env python
"""Build the W&B workspace of the suite's runs: the paper's figures plus a section per preset experiment.

    python scripts/wandb_dashboard.py --entity E --project P [--experiment NAME ...] [--out spec.json]
    python scripts/wandb_dashboard.py --entity E --project P --save     (after `wandb login`)

Without --experiment it shows every run of the project; with it, the runs of those
experiments (any experiment_name: paper, fig09_11_gauss_newton, default, ...).  The
presets paper, beyond_paper, baselines and curvature add their own panels.  Without
--save it only writes the workspace's spec (JSON) to --out or stdout, offline.  The
panels are described in second_order.suite.tracking.dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from second_order.suite.tracking.dashboard import PRESETS, build_workspace, save_workspace, workspace_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entity", required=True, help="W&B entity (user or team) owning the project")
    p.add_argument("--project", default="second-order", help="W&B project (default: second-order, the logger's)")
    p.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="show only the runs of this experiment (its experiment_name, the runs' W&B group); repeat for "
        f"several (default: every run of the project). Presets with their own panels: {', '.join(PRESETS)}",
    )
    p.add_argument("--name", default="second-order", help="the workspace's name (default: second-order)")
    p.add_argument("--out", type=Path, help="write the spec here instead of stdout")
    p.add_argument("--save", action="store_true", help="publish the workspace to W&B as a new saved view")
    return p


REPO = Path(__file__).resolve().parents[1]


def known_experiments(configs: Path = REPO / "configs") -> list[str]:
    """The experiment names the suite's configs give runs: ``configs/experiment/``, ``default``, the studies'."""
    import yaml

    names = {"default"}
    for path in (configs / "experiment").glob("*.yaml"):
        names.add(str((yaml.safe_load(path.read_text()) or {}).get("experiment_name") or path.stem))
    for path in (configs / "study").glob("*.yaml"):
        study = str((yaml.safe_load(path.read_text()) or {}).get("name") or path.stem)
        names |= {f"study_{study}", f"study_{study}_tune"}
    return sorted(names)


def unknown_experiment_note(name: str, known: Sequence[str]) -> str | None:
    """A note for an ``--experiment`` none of the configs give (a name of one's own is fine, a typo is not)."""
    import difflib

    if name in known:
        return None
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"note: --experiment {name}: no config gives runs that experiment_name ({hint}the suite's: "
        f"{', '.join(known)}); the workspace shows the runs named {name} as given"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment is not None and not all(e.strip() for e in args.experiment):
        parser.error("--experiment needs an experiment name")
    known = known_experiments()
    for name in args.experiment or []:
        note = unknown_experiment_note(name, known)
        if note:
            print(note, file=sys.stderr)
    workspace = build_workspace(args.entity, args.project, args.experiment, args.name)
    if args.out or not args.save:
        text = json.dumps(workspace_spec(workspace), indent=2, ensure_ascii=False) + "\n"
        if args.out:
            args.out.write_text(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
    if args.save:
        print(f"saved {save_workspace(workspace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
