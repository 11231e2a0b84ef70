"""What ``scripts/train.py`` does with a composed config, and how it reports errors.

Exit statuses: 0 a run that finished (completed, budget or diverged); 2 a user
error, printed as one line ``error: ...`` (bad config value, unknown option, bad
data, unusable checkpoint); 128 + N a run stopped by signal N (130 SIGINT, 143
SIGTERM), its checkpoint written; 1 a crash (a bug: traceback).
``SECOND_ORDER_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from second_order.suite.config import one_line

log = logging.getLogger("train")


def debug() -> bool:
    return os.environ.get("SECOND_ORDER_DEBUG", "") not in ("", "0")


def exit_on_user_error(main: Callable[[], Any]) -> int:
    """Call the Hydra app; a user error becomes one line on stderr and status 2."""
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside a run (e.g. while Hydra starts): no traceback
        print("error: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:
        message = one_line(err)
        if message is None or debug():
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def train_job(cfg: DictConfig) -> float | None:
    """One job: run it, record failures of sweep jobs, exit as documented above.

    Returns the final training loss (what a Hydra sweeper minimises).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from second_order.suite import experiment

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        summary = experiment.run({str(k): v for k, v in container.items()}, run_dir)
    except Exception as err:
        message = one_line(err)
        if debug() or (message is None and not multirun):
            raise
        if not multirun:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        if message is None:  # a crash: keep the sweep going, keep the traceback
            log.error("job crashed:\n%s", traceback.format_exc())
            message = f"{type(err).__name__}: {err}"
        else:
            log.error("job failed: %s", message)
        record_failure(run_dir, cfg, message)
        return None
    log.info(
        "%s: %s after %d steps, train loss %s, test acc %s, optimizer time %.1f s -> %s",
        summary["optimizer"],
        summary["status"],
        summary["steps"],
        _fmt(summary.get("train_loss"), "{:.4g}"),
        _fmt(summary.get("test_acc"), "{:.2%}"),
        summary["train_time_s"],
        run_dir,
    )
    if summary["status"] == "interrupted":
        sig = int(summary.get("signal") or signal.SIGINT)
        if multirun:  # stop the sweep too, with its table of every job on disk
            from second_order.suite.sweep import write_sweep_summary

            write_sweep_summary(Path(hc.sweep.dir), interrupted_by=sig)
        sys.exit(128 + sig)
    loss = summary.get("train_loss")
    return float(loss) if loss is not None else None


def record_failure(run_dir: Path, cfg: DictConfig, message: str) -> None:
    """Mark a sweep job ``failed`` in its summary.json, keeping what it already had."""
    from second_order.suite.tracking import runs

    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / runs.SUMMARY_FILE
    base = runs.read_summary(run_dir) or {}
    if base.get("status") in ("completed", "budget", "diverged"):
        log.error("%s keeps its finished record (status %s)", run_dir, base["status"])
        return  # re-running a sweep never turns a finished job into a failed one
    name = OmegaConf.select(cfg, "optimizer.name", default=None)
    seed = OmegaConf.select(cfg, "seed", default=None)
    runs.write_json(summary_path, {**base, "optimizer": name, "seed": seed, "status": "failed", "error": message})


def _fmt(value: Any, spec: str) -> str:
    """A number for a log line (``n/a`` when missing or not finite)."""
    try:
        return spec.format(float(value)) if value is not None and float(value) == float(value) else "n/a"
    except (TypeError, ValueError):
        return "n/a"
