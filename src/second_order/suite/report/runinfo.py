"""Facts about one run, read only from its own files.

Each fact comes from summary.json first, then config.yaml, then the logs (steps.csv,
eval.csv, environment.json).  Nothing here knows a dataset, a model or a protocol:
what a run does not record is ``None`` (or NaN), and the report shows a dash.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from second_order.suite.tracking.runs import ENV_FILE, Run

EARLY_STATUSES = ("budget", "diverged", "interrupted")


def cfg_get(run: Run, dotted: str, default: Any = None) -> Any:
    """``run.config`` value at a dotted key (``"trainer.batch_size"``), else ``default``."""
    node: Any = run.config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def positive_int(value: Any) -> int | None:
    """``value`` as a positive int (bools and non-integral numbers are not), else None."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f == int(f) and f > 0 else None


def summary_float(run: Run, key: str) -> float:
    """A summary value as float, NaN when missing / null / not a number."""
    try:
        return float(run.summary.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def run_status(run: Run) -> str:
    """``completed | diverged | interrupted | budget | ...`` (``diverged`` wins if flagged)."""
    status = str(run.summary.get("status") or "unknown")
    return "diverged" if run.summary.get("diverged") else status


def status_counts(runs: Sequence[Run]) -> str:
    """E.g. ``"3 completed"`` or ``"1 budget, 1 diverged"``."""
    counts = collections.Counter(run_status(r) for r in runs)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"


def _last_finite(values: np.ndarray | None, reduce: str) -> float:
    values = np.asarray(values if values is not None else [], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan
    return float(values.max() if reduce == "max" else values[-1])


def steps_run(run: Run) -> float:
    """Optimizer steps the run made (summary ``steps``, else the largest logged step)."""
    steps = summary_float(run, "steps")
    return steps if math.isfinite(steps) else _last_finite(run.steps.get("step"), "max")


def train_time(run: Run) -> float:
    """Optimizer seconds (summary ``train_time_s``, else the last logged ``time_s``)."""
    t = summary_float(run, "train_time_s")
    return t if math.isfinite(t) else _last_finite(run.steps.get("time_s"), "last")


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN below two values) and count of the finite values."""
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return float(np.mean(x)), std, int(x.size)


# ------------------------------------------------------------------ protocol


def batch_size(run: Run) -> int | None:
    """Summary ``batch_size``, else ``trainer.batch_size`` of the config."""
    return positive_int(run.summary.get("batch_size")) or positive_int(cfg_get(run, "trainer.batch_size"))


def configured_epochs(run: Run) -> int | None:
    """Epochs the run was configured for: summary ``epochs``, else ``trainer.epochs``."""
    return positive_int(run.summary.get("epochs")) or positive_int(cfg_get(run, "trainer.epochs"))


def logged_steps_per_epoch(run: Run) -> int | None:
    """Steps per epoch shown by the logs: step ``spe + 1`` is the first row of epoch 1;
    else ``step / epoch`` of the evaluations (smallest, and exact, at epoch ends)."""
    step, epoch = run.steps.get("step", np.array([])), run.steps.get("epoch", np.array([]))
    later = step[epoch >= 1] if step.size == epoch.size else np.array([])
    if later.size and int(later.min()) > 1:
        return int(later.min()) - 1
    e, s = run.evals.get("epoch", np.array([])), run.evals.get("step", np.array([]))
    ratios = s[e >= 1] / e[e >= 1] if s.size == e.size else np.array([])
    ratios = ratios[np.isfinite(ratios)]
    return positive_int(math.floor(ratios.min())) if ratios.size else None


def steps_per_epoch(run: Run) -> int | None:
    """Summary ``steps_per_epoch``, else the logs, else ``train_examples // batch_size``."""
    spe = positive_int(run.summary.get("steps_per_epoch")) or logged_steps_per_epoch(run)
    if spe:
        return spe
    n, batch = positive_int(run.summary.get("train_examples")), batch_size(run)
    return positive_int(n // batch) if n and batch else None


def protocol_steps(run: Run) -> int | None:
    """Steps a complete run makes: summary ``protocol_steps``, else epochs × steps per epoch."""
    steps = positive_int(run.summary.get("protocol_steps"))
    if steps:
        return steps
    epochs, spe = configured_epochs(run), steps_per_epoch(run)
    return epochs * spe if epochs and spe else None


def dataset_name(run: Run) -> str | None:
    """Summary ``dataset`` (e.g. ``"mnist"``), else ``data.name`` of the config."""
    name = run.summary.get("dataset") or cfg_get(run, "data.name")
    return str(name) if name else None


def model_description(run: Run) -> str | None:
    """Summary ``model``; else an MLP description rebuilt from ``model.*`` (and ``param_count``)."""
    if run.summary.get("model"):
        return str(run.summary["model"])
    hidden, classes = cfg_get(run, "model.hidden"), positive_int(cfg_get(run, "model.num_classes"))
    if not isinstance(hidden, list) or not classes or not all(positive_int(h) for h in hidden):
        return None
    widths = [int(h) for h in hidden] + [classes]
    inputs = _input_width(widths, positive_int(run.summary.get("param_count")))
    return "MLP " + "-".join(map(str, ([inputs] if inputs else ["?"]) + widths))


def _input_width(widths: list[int], params: int | None) -> int | None:
    """Input size of a dense MLP with ``params`` weights + biases and layer ``widths``."""
    if not params:
        return None
    rest = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    inputs, remainder = divmod(params - rest, widths[0])
    return inputs - 1 if remainder == 0 and inputs > 1 else None


def n_test_examples(run: Run) -> int | None:
    return positive_int(run.summary.get("test_examples"))


def _budget_value(run: Run, key: str) -> Any:
    """``trainer.<key>`` in effect: the summary's (its last segment's), else config.yaml's (its first)."""
    return run.summary[key] if key in run.summary else cfg_get(run, f"trainer.{key}")


def budget(run: Run) -> str:
    """The run's budgets as words (``"max steps 200, max time 60 s"``), ``""`` without."""
    parts = []
    if positive_int(_budget_value(run, "max_steps")):
        parts.append(f"max steps {int(_budget_value(run, 'max_steps'))}")
    seconds = _budget_value(run, "max_time_s")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
        parts.append(f"max time {seconds:g} s")
    return ", ".join(parts)


# ------------------------------------------------------------------- devices


def _device_name(kind: str, backend: str, count: Any = 1) -> str:
    name = kind if backend.lower() in ("", kind.lower()) else f"{kind} ({backend})"
    return f"{int(count)} × {name}" if isinstance(count, int) and count > 1 else name


def segments(run: Run) -> list[dict[str, Any]]:
    """Summary ``segments`` (one per resumed piece of the run), dicts only."""
    found = run.summary.get("segments")
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def devices(run: Run) -> list[str]:
    """Devices the run trained on, in segment order (else from environment.json)."""
    names = [
        _device_name(str(s.get("device_kind") or "?"), str(s.get("backend") or ""), s.get("num_devices", 1))
        for s in segments(run)
    ]
    if names:
        return list(dict.fromkeys(names))
    try:
        env = json.loads((run.path / ENV_FILE).read_text())
    except (OSError, ValueError):
        return []
    if isinstance(env, dict) and env.get("device_kind"):
        return [_device_name(str(env["device_kind"]), str(env.get("backend") or ""))]
    return []


def cpus(run: Run) -> list[str]:
    """The CPUs the run's segments ran on, ``"<model>, <n> cores"`` (environment.json; [] for older runs)."""
    try:
        env = json.loads((run.path / ENV_FILE).read_text())
    except (OSError, ValueError):
        return []
    found = env.get("segments") if isinstance(env, dict) else None
    records = [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []
    names = [f"{r['cpu_model']}, {r.get('cpu_cores')} cores" for r in records if r.get("cpu_model")]
    return list(dict.fromkeys(names))


def mixed_devices(run: Run) -> bool:
    """Whether the run's segments ran on different devices (backend, device kind or number of devices)."""
    return len({(str(s.get("backend")), str(s.get("device_kind")), s.get("num_devices", 1)) for s in segments(run)}) > 1
