"""Writes a run's metrics to local CSV files (the source of truth) and to W&B."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from second_order.suite.tracking import runs


class RunLogger:
    """Per-step, per-epoch and curvature metrics → ``steps.csv`` / ``eval.csv`` / ``curvature.csv``, and W&B.

    ``diagnostic_names`` fixes the extra columns of ``steps.csv`` (the optimizer's
    diagnostics), ``curvature_names`` those of ``curvature.csv`` (none: no such file),
    ``wandb_curvature_names`` the curvature columns also sent to W&B (default: all).
    Rows are buffered by the OS and flushed every chunk; ``flush(durable=True)`` also
    fsyncs (every epoch, checkpoint and stop).  W&B receives every curvature column but
    the SLQ nodes and weights (``curvature/<name>``): they are the raw density, kept
    in the CSV for the report's density figure.  ``wandb_logged``: for a resumed run,
    the last step of each table (``steps``, ``eval``, ``curvature``) that W&B's logs hold
    (:func:`~second_order.suite.tracking.wandb_convert.logged_through`); the rows it lacks
    up to the checkpoint are sent again by :meth:`truncate_after`.
    """

    def __init__(
        self,
        run_dir: Path,
        diagnostic_names: Sequence[str],
        wandb: Any | None = None,
        curvature_names: Sequence[str] = (),
        validation: bool = False,
        wandb_curvature_names: Sequence[str] | None = None,
        wandb_logged: Mapping[str, float] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.diagnostic_names = tuple(sorted(diagnostic_names))
        self.curvature_names = tuple(curvature_names)
        self.wandb_curvature_names = (
            self.curvature_names if wandb_curvature_names is None else tuple(wandb_curvature_names)
        )
        self.steps = runs.CsvLog(self.run_dir / runs.STEPS_FILE, runs.STEP_COLUMNS + self.diagnostic_names)
        eval_columns = runs.EVAL_COLUMNS + (runs.VALIDATION_COLUMNS if validation else ())
        self.evals = runs.CsvLog(self.run_dir / runs.EVAL_FILE, eval_columns)
        self.curvature = self._curvature_log()
        self.wandb = wandb
        self.wandb_logged = wandb_logged

    def _curvature_log(self) -> runs.CsvLog | None:
        if not self.curvature_names:
            return None
        return runs.CsvLog(self.run_dir / runs.CURVATURE_FILE, runs.CURVATURE_COLUMNS + self.curvature_names)

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
            self.wandb.log_steps([self._wandb_step(r) for r in rows])

    def _wandb_step(self, row: Sequence[Any]) -> dict[str, Any]:
        names = ("step", "epoch", "train/loss", "time_s") + tuple("opt/" + n for n in self.diagnostic_names)
        return dict(zip(names, row))

    def log_eval(
        self,
        epoch: int,
        step: int,
        time_s: float,
        test_loss: float,
        test_acc: float,
        validation: tuple[float, float] | None = None,
    ) -> None:
        """One evaluation; ``validation`` = ``(val_loss, val_acc)`` when the run holds a validation split out."""
        self.evals.write_rows([(epoch, step, time_s, test_loss, test_acc, *(validation or ()))])
        self.evals.flush()
        if self.wandb is not None:
            self.wandb.log_eval(_wandb_eval(epoch, step, time_s, test_loss, test_acc, validation))

    def log_curvature(self, step: int, epoch: int, time_s: float, seconds: float, values: Mapping[str, Any]) -> None:
        """One curvature measurement at ``step`` (``values`` keyed by ``curvature_names``)."""
        if self.curvature is None:
            raise ValueError("log_curvature needs curvature_names")
        row = (step, epoch, float(time_s), float(seconds), *(float(values[n]) for n in self.curvature_names))
        self.curvature.write_rows([row])
        self.curvature.flush()
        if self.wandb is not None:
            self.wandb.log_eval(self._wandb_curvature(step, epoch, time_s, values))

    def _wandb_curvature(self, step: int, epoch: int, time_s: float, values: Mapping[str, Any]) -> dict[str, Any]:
        metrics = {f"curvature/{n}": float(values[n]) for n in self.wandb_curvature_names}
        return {"step": step, "epoch": epoch, "time_s": float(time_s), **metrics}

    def _tables(self) -> list[runs.CsvLog]:
        return [t for t in (self.steps, self.evals, self.curvature) if t is not None]

    def flush(self, durable: bool = False) -> None:
        for table in self._tables():
            table.flush(durable)

    def truncate_after(self, step: int, evals_upto: int | None = None, curvature_upto: int | None = None) -> None:
        """Forget the rows a resumed run logs again.

        ``steps.csv`` keeps its rows at steps ≤ ``step`` (the checkpoint's), ``eval.csv``
        and ``curvature.csv`` theirs at steps ≤ ``evals_upto`` / ``curvature_upto``
        (default ``step``): an evaluation or measurement at the checkpoint's own step
        that was logged after the checkpoint was written is redone, so it goes too.
        Then W&B is sent the kept rows its logs lack (``wandb_logged``), once.
        """
        for table in self._tables():
            table.close()
        bounds = {
            runs.STEPS_FILE: step,
            runs.EVAL_FILE: step if evals_upto is None else evals_upto,
            runs.CURVATURE_FILE: step if curvature_upto is None else curvature_upto,
        }
        for name, last in bounds.items():
            runs.truncate_after_step(self.run_dir / name, last)
        self.steps = runs.CsvLog(self.run_dir / runs.STEPS_FILE, self.steps.columns)
        self.evals = runs.CsvLog(self.run_dir / runs.EVAL_FILE, self.evals.columns)
        self.curvature = self._curvature_log()
        if self.wandb is not None and self.wandb_logged is not None:
            self._replay_to_wandb(self.wandb, self.wandb_logged)
            self.wandb_logged = None

    def _replay_to_wandb(self, wandb: Any, logged: Mapping[str, float]) -> None:
        """Send W&B the kept rows past the last step its logs hold, per table.

        A kill loses what W&B's writer had not flushed yet (it writes its log in 32 KiB
        blocks): rows the checkpoint already covers, which a resume never logs again,
        so without this the mirror would keep that gap for good.
        """
        for name, kind in ((runs.STEPS_FILE, "steps"), (runs.EVAL_FILE, "eval"), (runs.CURVATURE_FILE, "curvature")):
            table = runs.read_table(self.run_dir / name)
            if "step" not in table:
                continue
            lacking = table["step"] > logged.get(kind, -1.0)
            for values in zip(*(column[lacking] for column in table.values())):
                r = {k: v.item() for k, v in zip(table, values)}
                step, epoch = int(r["step"]), int(r["epoch"])
                if kind == "steps":
                    diags = (r[n] for n in self.diagnostic_names)
                    wandb.log_steps([self._wandb_step((step, epoch, r["train_loss"], r["time_s"], *diags))])
                elif kind == "eval":
                    val = (r["val_loss"], r["val_acc"]) if "val_loss" in r else None
                    wandb.log_eval(_wandb_eval(epoch, step, r["time_s"], r["test_loss"], r["test_acc"], val))
                else:
                    wandb.log_eval(self._wandb_curvature(step, epoch, r["time_s"], r))

    def close(self) -> None:
        with contextlib.ExitStack() as stack:  # every table is closed, even when one fails
            for table in self._tables():
                stack.callback(table.close)


def _wandb_eval(
    epoch: int, step: int, time_s: float, test_loss: float, test_acc: float, validation: tuple[float, float] | None
) -> dict[str, Any]:
    row = {"step": step, "epoch": epoch, "time_s": time_s, "eval/loss": test_loss, "eval/acc": test_acc}
    if validation is not None:
        row.update({"val/loss": validation[0], "val/acc": validation[1]})
    return row


def _python_values(values: np.ndarray) -> list[Any]:
    arr = np.asarray(values)
    return arr.astype(int).tolist() if np.issubdtype(arr.dtype, np.integer) else arr.astype(float).tolist()


class NullLogger:
    """A :class:`RunLogger` that writes nothing: the secondary processes of a multi-process run."""

    def log_steps(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_eval(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_curvature(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self, durable: bool = False) -> None:
        pass

    def truncate_after(self, step: int, evals_upto: int | None = None, curvature_upto: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass
