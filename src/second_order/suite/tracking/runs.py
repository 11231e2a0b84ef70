"""The on-disk format of one training run, written by the trainer and read by plots.

A run directory holds::

    config.yaml        the resolved Hydra config of the run
    environment.json   package versions, device, git commit, host; one record per segment
                       (a run resumed on another machine has several)
    steps.csv          one row per optimizer step: step, epoch, train_loss, time_s, <diagnostics>
    eval.csv           one row per evaluation: epoch, step, time_s, test_loss, test_acc
                       (+ val_loss, val_acc with a validation split)
    curvature.csv      diagnostics=curvature only: one row per measurement: step, epoch, time_s,
                       seconds (its own cost), <matrix>_top1..., _bottom1..., _trace, _neg_mass,
                       _slq_node0..., _slq_weight0... (see second_order.suite.spectrum)
    summary.json       final numbers and status (see ``SUMMARY_KEYS``)
    .hydra/            scripts/train.py: Hydra's record of the last command the directory accepted

``time_s`` is the cumulative optimizer wall-clock time (compilation, evaluation and
logging excluded).  Everything a figure or table needs is in these files; nothing
here knows about optimizers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.yaml"
ENV_FILE = "environment.json"
STEPS_FILE = "steps.csv"
EVAL_FILE = "eval.csv"
CURVATURE_FILE = "curvature.csv"
SUMMARY_FILE = "summary.json"

STEP_COLUMNS = ("step", "epoch", "train_loss", "time_s")
EVAL_COLUMNS = ("epoch", "step", "time_s", "test_loss", "test_acc")
VALIDATION_COLUMNS = ("val_loss", "val_acc")  # eval.csv of runs with a validation split (data.validation_examples)
CURVATURE_COLUMNS = ("step", "epoch", "time_s", "seconds")
SUMMARY_KEYS = (
    "optimizer",
    "experiment",
    "seed",
    "status",  # completed | diverged | interrupted | budget
    "train_loss",
    "test_loss",
    "test_acc",
    "val_loss",  # with a validation split: the last evaluation's
    "val_acc",
    "objective",  # what scripts/train.py returns to a sweeper (see experiment.objective)
    "objective_metric",
    "steps",
    "epochs_completed",
    "train_time_s",
    "compile_time_s",
    "eval_time_s",
    "diverged",
    "diverged_step",
    "param_count",
    "log_time_s",
    "checkpoint_time_s",
    "curvature_time_s",  # diagnostics=curvature: seconds spent measuring (off the time axis)
    "curvature_calls",
    "signal",
    "wandb_run_id",
    "error",
    # the protocol, so that readers never assume a dataset or model
    "dataset",
    "model",
    "train_examples",
    "validation_examples",  # data.validation_examples: held out of the training set
    "test_examples",
    "batch_size",
    "epochs",
    "steps_per_epoch",
    "protocol_steps",  # epochs x steps_per_epoch: the steps of a complete run
    "max_steps",  # the budgets of the last segment (trainer.max_steps / max_time_s; a resume may change them)
    "max_time_s",
    "x64",
    "segments",  # one per (re)start: start_step, end_step, backend, device_kind, host, slurm_job, started_at, ended_at
)


class CsvLog:
    """Append-only CSV table with a fixed header; ``flush`` makes rows durable."""

    def __init__(self, path: Path | str, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = tuple(columns)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            with open(self.path, newline="") as f:
                first = f.readline()
            if not first.endswith(("\n", "\r")):  # a header torn by a kill: start the table again
                self.path.write_text("")
                exists = False
        if exists:
            header = next(csv.reader([first]))
            if tuple(header) != self.columns:
                raise ValueError(
                    f"{self.path}: existing columns {header} differ from {list(self.columns)}; "
                    "use a fresh run directory (hydra.run.dir=...)"
                )
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if not exists:
            self._writer.writerow(self.columns)

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self._writer.writerows(_fmt_row(r) for r in rows)

    def flush(self, durable: bool = True) -> None:
        """Hand rows to the OS; ``durable`` also fsyncs them to disk.

        A failed write (a full disk) raises an ``OSError`` that names this file.
        """
        try:
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
        except OSError as err:
            if err.filename is not None:
                raise
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def close(self) -> None:
        """Flush and close; after a failed write the file is closed all the same."""
        if self._file.closed:
            return
        try:
            self.flush()
        finally:
            with contextlib.suppress(OSError):  # the rows that could not be written are lost either way
                self._file.close()


def _fmt_row(row: Sequence[Any]) -> list[str]:
    return [_fmt(v) for v in row]


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest round-trip representation
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _complete_rows(path: Path) -> tuple[list[str], list[list[str]], int]:
    """Header, complete data rows and the number of torn rows dropped.

    A row is torn when a kill interrupted its write: it is the last line and has no
    line terminator, or it has the wrong number of fields.  Such rows are dropped.
    """
    with open(path, newline="") as f:
        text = f.read()
    if not text:
        return [], [], 0
    lines = text.splitlines(keepends=True)
    torn = 0
    if not lines[-1].endswith(("\n", "\r")):
        lines, torn = lines[:-1], 1
    rows = list(csv.reader(lines))
    if not rows:
        return [], [], torn
    header, body = rows[0], [r for r in rows[1:] if r]
    complete = [r for r in body if len(r) == len(header)]
    return header, complete, torn + len(body) - len(complete)


def fsync_dir(path: Path) -> None:
    """fsync a directory: makes the renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, then fsync the directory, so that the rename itself survives a
    power loss (else a rewound ``steps.csv`` could come back unrewound beside a newer checkpoint)."""
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # a file system or platform that cannot fsync a directory
        fsync_dir(path.parent)


def truncate_after_step(path: Path | str, last_step: int) -> None:
    """Keep only complete rows whose ``step`` is at most ``last_step`` (used when resuming)."""
    path = Path(path)
    if not path.exists():
        return
    header, body, _ = _complete_rows(path)
    if not header:
        path.unlink()
        return
    i = header.index("step")
    kept = [r for r in body if _parse(r[i]) <= last_step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(kept)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def write_json(path: Path | str, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file + rename), NaN/inf written as null."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_json_safe(data), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


def _json_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def read_table(path: Path | str) -> dict[str, np.ndarray]:
    """Read a CSV table written by :class:`CsvLog` into column arrays (float).

    Torn rows (a write cut short by a kill) are dropped with a warning naming the file.
    """
    path = Path(path)
    if not path.exists():
        return {}
    header, body, torn = _complete_rows(path)
    if torn:
        warnings.warn(f"{path}: dropped {torn} torn row(s) (a write cut short)", stacklevel=2)
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cols[name] = np.array([_parse(r[j]) for r in body], dtype=np.float64)
    return cols


def _parse(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


@dataclasses.dataclass
class Run:
    """A run directory loaded into memory."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    steps: dict[str, np.ndarray]
    evals: dict[str, np.ndarray]
    curvature: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # empty without diagnostics

    @property
    def optimizer(self) -> str:
        return str(self.summary.get("optimizer") or _get(self.config, "optimizer.name", "unknown"))

    @property
    def experiment(self) -> str:
        return str(self.summary.get("experiment") or _get(self.config, "experiment_name", "default"))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", _get(self.config, "seed", 0)))


def read_summary(run_dir: Path | str) -> dict[str, Any] | None:
    """A run's summary.json, or None when it is missing or unreadable."""
    try:
        return dict(json.loads((Path(run_dir) / SUMMARY_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` → ``{"a.b": (1,)}``: dotted keys, hashable values."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = _hashable(value)
    return flat


def flatten_with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`flatten_config`, with each schema key ``cfg`` lacks at its default (an empty ``cfg`` stays empty).

    What a run whose config.yaml predates a key (e.g. ``data.name``) ran with: resume checks
    and report grouping compare old and new runs through this.
    """
    flat = flatten_config(cfg)
    if not flat:
        return flat
    return {**{k: v for k, v in _flat_schema_defaults().items() if k not in flat}, **flat}


@functools.lru_cache(maxsize=1)
def _flat_schema_defaults() -> dict[str, Any]:
    from second_order.suite.config import schema_defaults

    return {k: _hashable(v) for k, v in schema_defaults().items()}


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


def _get(cfg: Mapping[str, Any], dotted: str, default: Any) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def load_run(path: Path | str) -> Run:
    """Load a run directory; raises FileNotFoundError naming the missing file."""
    path = Path(path)
    summary_path = path / SUMMARY_FILE
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: not a run directory (or the run never started)")
    summary = json.loads(summary_path.read_text())
    config: dict[str, Any] = {}
    if (path / CONFIG_FILE).exists():
        import yaml

        config = yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
    return Run(
        path=path,
        config=config,
        summary=summary,
        steps=read_table(path / STEPS_FILE),
        evals=read_table(path / EVAL_FILE),
        curvature=read_table(path / CURVATURE_FILE) if (path / CURVATURE_FILE).exists() else {},
    )


def find_runs(roots: Iterable[Path | str]) -> list[Run]:
    """All run directories (those holding summary.json) below the given roots, sorted by path."""
    found: list[Run] = []
    for root in roots:
        root = Path(root)
        paths = [root] if (root / SUMMARY_FILE).exists() else sorted(p.parent for p in root.rglob(SUMMARY_FILE))
        found.extend(load_run(p) for p in paths)
    return found
