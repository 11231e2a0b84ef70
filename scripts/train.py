#!/usr/bin/env python
"""Train one configuration (or a Hydra multirun sweep) and write its run directory.

    python scripts/train.py optimizer=hessian_free data.dir=/path/to/mnist
    python scripts/train.py -m experiment=fig09_11_gauss_newton
    python scripts/train.py optimizer=newton trainer.resume=true   # continue an interrupted run

User errors (a bad config value, an unknown option, bad data, an unusable
checkpoint) print one line and exit with status 2; set SECOND_ORDER_DEBUG=1 for
the full traceback.  SECOND_ORDER_NO_LOCAL_CONFIG=1 runs without configs/local/default.yaml
(as ``~local`` does).  In a sweep, a failing job is recorded (status "failed" in its
summary.json) and the other jobs go on; the sweep then exits with status 3, naming a
failed job and its table (sweep_summary.json).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from second_order.suite import cli
from second_order.suite.config import register
from second_order.suite.local_config import with_local_config_switch

register()  # the schemas of configs/config.yaml


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return cli.train_job(cfg)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # composition errors reach cli.exit_on_user_error
    sys.argv[1:] = with_local_config_switch(sys.argv[1:])  # SECOND_ORDER_NO_LOCAL_CONFIG=1: as if ~local
    refused = cli.refused_override(sys.argv[1:])
    if refused:
        print(refused, file=sys.stderr)
        sys.exit(2)
    sys.exit(cli.exit_on_user_error(main))
