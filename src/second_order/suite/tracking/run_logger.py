"""Writes a run's metrics to local CSV files (the source of truth) and to W&B."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from second_order.suite.tracking import runs


class RunLogger:
    """Per-step and per-epoch metrics → ``steps.csv`` / ``eval.csv`` and an optional W&B run.

    ``diagnostic_names`` fixes the extra columns of ``steps.csv`` (the optimizer's
    diagnostics).  Rows are buffered by the OS and flushed every chunk; ``flush(durable=True)``
    also fsyncs (every epoch, checkpoint and stop).
    """

    def __init__(self, run_dir: Path, diagnostic_names: Sequence[str], wandb: Any | None = None):
        self.run_dir = Path(run_dir)
        self.diagnostic_names = tuple(sorted(diagnostic_names))
        self.steps = runs.CsvLog(self.run_dir / runs.STEPS_FILE, runs.STEP_COLUMNS + self.diagnostic_names)
        self.evals = runs.CsvLog(self.run_dir / runs.EVAL_FILE, runs.EVAL_COLUMNS)
        self.wandb = wandb

    def log_steps(
        self,
        steps: np.ndarray,
        epoch: int,
        losses: np.ndarray,
        times: np.ndarray,
        diagnostics: Mapping[str, np.ndarray],
    ) -> None:
        diag_cols = [_python_values(diagnostics[name]) for name in self.diagnostic_names]
        rows = [
            (int(s), epoch, float(loss), float(t), *(col[i] for col in diag_cols))
            for i, (s, loss, t) in enumerate(zip(steps, losses, times))
        ]
        self.steps.write_rows(rows)
        self.steps.flush(durable=False)
        if self.wandb is not None:
            names = ("step", "epoch", "train/loss", "time_s") + tuple("opt/" + n for n in self.diagnostic_names)
            self.wandb.log_steps([dict(zip(names, r)) for r in rows])

    def log_eval(self, epoch: int, step: int, time_s: float, test_loss: float, test_acc: float) -> None:
        self.evals.write_rows([(epoch, step, time_s, test_loss, test_acc)])
        self.evals.flush()
        if self.wandb is not None:
            self.wandb.log_eval(
                {"step": step, "epoch": epoch, "time_s": time_s, "eval/loss": test_loss, "eval/acc": test_acc}
            )

    def flush(self, durable: bool = False) -> None:
        self.steps.flush(durable)
        self.evals.flush(durable)

    def truncate_after(self, step: int) -> None:
        """Forget rows logged after ``step`` (resuming from a checkpoint taken there)."""
        self.steps.close()
        self.evals.close()
        runs.truncate_after_step(self.run_dir / runs.STEPS_FILE, step)
        runs.truncate_after_step(self.run_dir / runs.EVAL_FILE, step)
        self.steps = runs.CsvLog(self.run_dir / runs.STEPS_FILE, self.steps.columns)
        self.evals = runs.CsvLog(self.run_dir / runs.EVAL_FILE, self.evals.columns)

    def close(self) -> None:
        try:
            self.steps.close()
        finally:
            self.evals.close()


def _python_values(values: np.ndarray) -> list[Any]:
    arr = np.asarray(values)
    return arr.astype(int).tolist() if np.issubdtype(arr.dtype, np.integer) else arr.astype(float).tolist()
