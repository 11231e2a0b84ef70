#!/usr/bin/env python
"""Train one configuration (or a Hydra multirun sweep) and write its run directory.

    python scripts/train.py optimizer=hessian_free data.dir=/path/to/mnist
    python scripts/train.py -m experiment=fig09_11_gauss_newton
    python scripts/train.py optimizer=newton trainer.resume=true   # continue an interrupted run

User errors (bad config value, bad data) print one line and exit with status 2;
set SECOND_ORDER_DEBUG=1 for the full traceback.  In a sweep, a failing job is
recorded (status "failed" in its summary.json) and the other jobs go on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("train")
DEBUG = os.environ.get("SECOND_ORDER_DEBUG", "") not in ("", "0")


def user_error_types() -> tuple[type[BaseException], ...]:
    from second_order.suite.config import ConfigError
    from second_order.suite.data import DataError

    return (ConfigError, DataError, OmegaConfBaseException)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from second_order.suite import experiment
    from second_order.suite.tracking import runs

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        summary = experiment.run(container, run_dir)
    except user_error_types() as err:
        if DEBUG:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not multirun:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        log.error("job failed: %s", message)
        _record_failure(run_dir, cfg, message)
        return
    except Exception as err:  # a bug or a crash: keep the sweep going, keep the traceback
        if not multirun or DEBUG:
            raise
        log.error("job crashed:\n%s", traceback.format_exc())
        _record_failure(run_dir, cfg, f"{type(err).__name__}: {err}")
        return
    log.info("%s: %s after %d steps, test acc %s, optimizer time %.1f s -> %s",
             summary["optimizer"], summary["status"], summary["steps"], summary["test_acc"],
             summary["train_time_s"], run_dir)
    if summary["status"] == "interrupted":
        if multirun:
            raise KeyboardInterrupt  # stop the sweep too; every finished job is on disk
        sys.exit(128 + int(summary.get("signal") or signal.SIGINT))


def _record_failure(run_dir: Path, cfg: DictConfig, message: str) -> None:
    from second_order.suite.tracking import runs

    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / runs.SUMMARY_FILE
    base = {}
    if summary_path.exists():
        import json

        base = json.loads(summary_path.read_text())
    name = OmegaConf.select(cfg, "optimizer.name", default=None)
    seed = OmegaConf.select(cfg, "seed", default=None)
    runs.write_json(summary_path, {**base, "optimizer": name, "seed": seed, "status": "failed", "error": message})


if __name__ == "__main__":
    main()
