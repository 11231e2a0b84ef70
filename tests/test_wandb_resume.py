"""The W&B offline mirror of a resumed run holds every row the local files hold, even after a kill
lost the tail of W&B's log (its writer flushes whole 32 KiB blocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

pytest.importorskip("wandb")

from second_order.suite import experiment  # noqa: E402
from second_order.suite.tracking import runs  # noqa: E402
from second_order.suite.tracking.wandb_convert import logged_through, record_to_run_dir  # noqa: E402
from second_order.suite.tracking.wandb_io import offline_run_dirs, read_offline_runs  # noqa: E402

SMALL = ["optimizer=sgd", "trainer.chunk_steps=10", "trainer.progress=false", "logger.wandb.mode=offline"]


@pytest.fixture(scope="module", autouse=True)
def _isolated_wandb(wandb_sandbox: Path) -> Path:
    return wandb_sandbox


def _mirror(run_dir: Path, out: Path) -> runs.Run:
    with pytest.warns(UserWarning):  # the cut log's torn tail
        record = read_offline_runs(run_dir)
    return runs.load_run(record_to_run_dir(record, out))


@pytest.mark.slow
def test_a_resume_sends_wandb_the_rows_a_kill_lost(real_mnist_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = SMALL + [f"data.dir={real_mnist_dir}", "trainer.checkpoint_every_s=0", "trainer.eval_every_steps=10"]
    experiment.run(compose_config(overrides + ["trainer.max_steps=30"]), run_dir)
    log = next(offline_run_dirs(run_dir)[0].glob("run-*.wandb"))
    log.write_bytes(log.read_bytes()[: log.stat().st_size // 2])  # what a kill leaves: the log's first blocks
    held = logged_through(run_dir)["steps"]
    assert 0 <= held < 30, held  # the cut lost rows the checkpoint at 30 covers

    experiment.run(compose_config(overrides + ["trainer.max_steps=50", "trainer.resume=true"]), run_dir)
    mirror = _mirror(run_dir, tmp_path / "mirror")
    local = runs.load_run(run_dir)
    np.testing.assert_array_equal(mirror.steps["step"], np.arange(1, 51))
    np.testing.assert_array_equal(mirror.steps["train_loss"], local.steps["train_loss"])
    np.testing.assert_array_equal(mirror.evals["step"], local.evals["step"])
    np.testing.assert_array_equal(mirror.evals["test_acc"], local.evals["test_acc"])
