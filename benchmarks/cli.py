"""Command line of the benchmark: arguments, the sections in order, the output files."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchmarks
from benchmarks.methods import REPO, compose, load_methods
from benchmarks.settings import make_settings
from benchmarks.timing import CpuMonitor, now


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = benchmarks.__doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fast smoke run: small widths, few repeats, no eigh")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench", help="output directory")
    p.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR"), help="MNIST IDX directory (default $MNIST_DIR)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; quick 2)")
    p.add_argument("--skip-slow", action="store_true", help="skip every measurement expected to take > ~60 s")
    p.add_argument(
        "--max-measure-s",
        type=float,
        default=150.0,
        help="without --skip-slow: skip measurements expected to take longer than this (default 150)",
    )
    p.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True, help="width × batch scaling")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the straightforward-implementation baseline",
    )
    p.add_argument(
        "--epoch", action=argparse.BooleanOptionalAction, default=True, help="whole-epoch trainer vs yardstick"
    )
    p.add_argument(
        "--eigh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the eigendecomposition of H once (never in --quick/--skip-slow)",
    )
    p.add_argument(
        "--newton-step",
        action="store_true",
        help="always measure one whole undamped dense Newton step (its eigh path); by default it is "
        "measured once when predicted under half of --max-measure-s, else estimated from its parts",
    )
    p.add_argument(
        "--baseline-newton-full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time one step of the baseline Newton (jax.hessian + pinv) at the paper's size "
        "(minutes on a CPU; never in --quick/--skip-slow)",
    )
    p.add_argument("--widths", type=int, nargs="+", default=None, help="hidden widths of the scaling section")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes of the scaling section")
    p.add_argument(
        "--low-rank-max-rank",
        type=int,
        default=None,
        help="max_rank of the low-rank Newton paths (default: the configs' max_rank capped by the rank "
        "bound batch·(classes+2·hidden); the scaling section: the bound)",
    )
    args = p.parse_args(argv)
    if args.mnist_dir is None:
        default = REPO.parent / "shared" / "data" / "mnist"
        if (default / "train-images-idx3-ubyte.gz").exists():
            args.mnist_dir = str(default)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sections, write ``<out>/<device>.{json,md}`` and ``scaling_<device>.png``; 0 on success."""
    os.environ.setdefault("WANDB_SILENT", "true")
    args = parse_args(argv)
    if not args.mnist_dir:
        print("error: no MNIST directory: pass --mnist-dir or set MNIST_DIR", file=sys.stderr)
        return 2
    import jax

    from benchmarks import baseline, epoch, parts, report, scaling
    from second_order.suite.data import load_mnist
    from second_order.suite.tracking import environment

    base = compose()
    jax.config.update("jax_enable_x64", bool(base["x64"]))  # the configs' x64 (float64 solves), as the suite
    methods = load_methods()
    t_start = now()
    from second_order.suite.data import DataError

    try:
        data = load_mnist(args.mnist_dir)
    except DataError as err:  # one line naming the directory and the fix, as scripts/train.py prints it
        print(f"error: {err}", file=sys.stderr)
        return 2
    s = make_settings(args, base, int(data.train_images.shape[0]))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = report.device_name()
    doc = benchmarks.__doc__ or ""
    res: dict[str, Any] = {
        "device": device,
        "quick": s.quick,
        "settings": dataclasses.asdict(s),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
        "timing_protocol": doc.split("Timing protocol: ")[1].strip().replace("\n", " "),
    }
    res["environment"] = environment.record()
    res["environment"]["cpu_count"] = os.cpu_count()
    wall: dict[str, float] = {}
    mon, cpu = CpuMonitor(), {}
    m0 = mon.snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="second_order_bench-"))
    cache: epoch.RunCache = {}

    def section(name: str, fn: Callable[[], dict]) -> None:
        t0, ms = now(), mon.snapshot()
        res[name] = fn()
        wall[name] = now() - t0
        cpu[name] = mon.since(ms)

    files = {"json": str(out_dir / f"{device}.json"), "markdown": str(out_dir / f"{device}.md")}
    try:
        section("parts", lambda: parts.section_parts(data, s, methods))
        if args.epoch:
            section("epoch", lambda: epoch.section_epoch(data, s, methods, args.mnist_dir, workdir, cache))
        if args.baseline:
            section("baseline", lambda: baseline.section_baseline(data, s, methods, args.mnist_dir, workdir, cache))
        if args.scaling:
            plot = out_dir / f"scaling_{device}.png"

            def run_scaling() -> dict:
                sc = scaling.section_scaling(data, s, methods, res["parts"])
                report.plot_scaling(sc, plot, device)
                return sc

            section("scaling", run_scaling)
            files["plot"] = plot.name
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall["total"] = now() - t_start
    res["wall_s"] = wall
    cpu["total"] = mon.since(m0)
    res["cpu_contention"] = {
        "note": "foreign_cpu_share: CPU time of other processes / (wall × cores) while "
        "the section ran; > ~0.1 means the timings are disturbed",
        **cpu,
    }
    res["files"] = files
    res["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    res = report.strip_private(res)
    report.write_json(res, Path(files["json"]))
    report.write_markdown(res, Path(files["markdown"]))
    report.print_summary(res)
    return 0
