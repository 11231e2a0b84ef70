"""Section 2, ``epoch``: one epoch of the real trainer against a minimal jitted yardstick."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.methods import FAST, Method, compose, subset
from benchmarks.problem import Problem
from benchmarks.settings import Settings
from benchmarks.timing import block, log, measure, now, sec

RunCache = dict[tuple, list[dict]]


def make_chunk_fn(apply_fn: Callable, tx: optax.GradientTransformationExtraArgs) -> Callable:
    """The trainer's jitted chunk function ``(params, opt_state, X, Y, idx[K, B]) → (params,
    opt_state, losses[K], params_ok, diagnostics{[K]})``.

    Compatibility shim, the only one: ``second_order.suite.training.step.make_chunk_fn`` when
    it exists, else the trainer's private ``_make_chunk_fn`` (same signature and outputs).
    """
    try:
        from second_order.suite.training.step import make_chunk_fn as make
    except ImportError:
        from second_order.suite.training.trainer import _make_chunk_fn as make  # type: ignore[attr-defined,no-redef]
    return make(apply_fn, tx)


def trainer_run(
    method: Method,
    steps: int,
    mnist_dir: str,
    workdir: Path,
    *,
    hidden: int,
    tag: str = "",
    overrides: tuple[str, ...] = (),
) -> dict:
    """One real trainer run (``experiment.run``, W&B offline + CSV); its summary plus its step table."""
    from second_order.suite import experiment
    from second_order.suite.tracking import runs

    run_dir = Path(tempfile.mkdtemp(prefix=f"{method.key}{tag}-", dir=workdir))
    shutil.rmtree(run_dir)
    cfg = compose(
        [
            f"optimizer={method.config}",
            f"data.dir={mnist_dir}",
            f"trainer.max_steps={steps}",
            f"model.hidden=[{hidden}]",
            "trainer.progress=false",
            "logger.wandb.mode=offline",
            "experiment_name=bench",
            *overrides,
        ]
    )
    t0 = now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = experiment.run(cfg, run_dir)
    summary["wall_s"] = now() - t0
    summary["run_dir"] = str(run_dir)
    table = runs.read_table(run_dir / runs.STEPS_FILE)
    summary["_losses"] = np.asarray(table["train_loss"], dtype=np.float64)
    summary["_time_s"] = np.asarray(table["time_s"], dtype=np.float64)
    if "solve_path" in table:
        summary["_solve_path"] = np.asarray(table["solve_path"]).astype(int).tolist()
    summary["optimizer_config"] = {k: v for k, v in cfg["optimizer"].items() if k != "_target_"}
    return summary


def yardstick_fns(step: Callable) -> tuple[Callable, Callable]:
    """The yardsticks of a step function: ``lax.scan`` over pre-gathered batches, and one that
    gathers each batch from the on-device dataset."""

    def yardstick(params, opt_state, xb, yb):
        def body(carry, b):
            p, st = carry
            p, st, loss, diags = step(p, st, b[0], b[1])
            return (p, st), (loss, diags)

        (p, _), (losses, diags) = jax.lax.scan(body, (params, opt_state), (xb, yb))
        return p, losses, diags

    def yardstick_gather(params, opt_state, x_all, y_all, idx):
        def body(carry, i):
            p, st = carry
            p, st, loss, _ = step(p, st, x_all[i], y_all[i])
            return (p, st), loss

        return jax.lax.scan(body, (params, opt_state), idx)

    return yardstick, yardstick_gather


def section_epoch(
    data: Any, s: Settings, methods: Mapping[str, Method], mnist_dir: str, workdir: Path, cache: RunCache
) -> dict:
    """Trainer ``train_time_s`` vs the yardsticks for every FAST method; trainer runs go to ``cache``."""
    hidden = s.paper_hidden
    prob = Problem(data, hidden, s.batch, s.num_classes)
    steps = s.epoch_steps
    out: dict[str, Any] = {
        "steps": steps,
        "hidden": [hidden],
        "batch": s.batch,
        "trainer_repeats": s.trainer_repeats,
        "goal_ratio": 1.2,
        "methods": {},
        "note": "yardstick: lax.scan over the epoch's batches gathered beforehand (outside the "
        "timing), data on the device; yardstick_gather: the same but each step gathers "
        "its batch from the on-device dataset (as the trainer does)",
    }
    idx = prob.perm(0)[:steps]
    xb, yb = block((prob.x_all[idx], prob.y_all[idx]))  # the epoch's batches, on the device
    repeats = max(3, min(s.repeats, 5))
    for key, method in subset(methods, FAST).items():
        runs_ = [
            trainer_run(method, steps, mnist_dir, workdir, hidden=hidden, tag=f"-epoch{r}")
            for r in range(s.trainer_repeats)
        ]
        cache[(key, hidden, steps)] = runs_
        train_times = [r["train_time_s"] for r in runs_]
        tx = method.tx()

        yardstick, yardstick_gather = yardstick_fns(prob.step_fn(tx))
        t, (_, losses, diags) = measure(
            yardstick,
            prob.params,
            tx.init(prob.params),
            xb,
            yb,
            repeats=repeats,
            min_total_s=s.min_total_s,
            budget_s=s.slow_budget_s,
        )

        tg, _ = measure(
            yardstick_gather,
            prob.params,
            tx.init(prob.params),
            prob.x_all,
            prob.y_all,
            idx,
            repeats=repeats,
            min_total_s=s.min_total_s,
            budget_s=s.slow_budget_s,
        )
        losses = np.asarray(losses, dtype=np.float64)
        trainer_losses = runs_[0]["_losses"]
        trainer_s = float(np.median(train_times))
        m = {
            "trainer_train_time_s": train_times,
            "trainer_median_s": trainer_s,
            "trainer_compile_s": [r["compile_time_s"] for r in runs_],
            "trainer_other_s": {
                k: [r[k] for r in runs_] for k in ("eval_time_s", "log_time_s", "checkpoint_time_s", "wall_s")
            },
            "trainer_status": [r["status"] for r in runs_],
            "yardstick": t,
            "ratio": trainer_s / sec(t),
            "yardstick_gather": tg,
            "ratio_vs_yardstick_gather": trainer_s / sec(tg),
            "per_step_trainer_s": trainer_s / steps,
            "per_step_yardstick_s": sec(t) / steps,
            "same_losses_max_abs_diff": (
                float(np.max(np.abs(trainer_losses - losses))) if len(trainer_losses) == len(losses) else None
            ),
            "final_loss": float(np.mean(losses[-50:])),
        }
        if "cg_iterations" in diags:
            m["cg_iterations_mean"] = float(np.mean(np.asarray(diags["cg_iterations"])))
        if not s.quick:
            m["breakdown"] = trainer_breakdown(prob, tx, idx, int(method.trainer["chunk_steps"]), s)
        out["methods"][key] = m
        log(
            f"epoch {key}: trainer {trainer_s:.3f} s, yardstick {sec(t):.3f} s, ratio {m['ratio']:.2f}; "
            f"yardstick with on-device gather {sec(tg):.3f} s, ratio {m['ratio_vs_yardstick_gather']:.2f}"
        )
    return out


def trainer_breakdown(
    prob: Problem, tx: optax.GradientTransformationExtraArgs, idx: jax.Array, chunk: int, s: Settings
) -> dict:
    """Where the trainer's time goes beyond the yardstick: its own jitted chunk function
    (batch gather on the device, finiteness check and per-step diagnostics as outputs) run
    over the whole epoch in one call, and in chunks of ``chunk`` steps like the trainer."""
    chunk_fn = make_chunk_fn(prob.model.apply, tx)
    st = tx.init(prob.params)
    args = (prob.params, st, prob.x_all, prob.y_all)
    one, _ = measure(chunk_fn, *args, idx, repeats=3, min_total_s=s.min_total_s, budget_s=s.slow_budget_s)
    sizes = sorted({min(chunk, len(idx) - i) for i in range(0, len(idx), chunk)})
    lower = chunk_fn.lower if hasattr(chunk_fn, "lower") else jax.jit(chunk_fn).lower
    compiled = {k: lower(*args, idx[:k]).compile() for k in sizes}

    def fresh() -> tuple[Any, Any]:
        """Copies of the initial state: the chunk function may donate its inputs (not on CPU)."""
        return block(jax.tree_util.tree_map(jnp.copy, (prob.params, st)))

    def epoch_in_chunks(params: Any, opt_state: Any) -> Any:
        for i in range(0, len(idx), chunk):
            sl = idx[i : i + chunk]
            params, opt_state, *_ = block(compiled[sl.shape[0]](params, opt_state, prob.x_all, prob.y_all, sl))
        return params

    epoch_in_chunks(*fresh())  # warm-up
    samples = []
    for _ in range(3):
        state = fresh()
        t0 = now()
        epoch_in_chunks(*state)
        samples.append(now() - t0)
    return {
        "trainer_chunk_fn_one_call": one,
        "trainer_chunk_fn_in_chunks": {
            "median_s": statistics.median(samples),
            "samples_s": samples,
            "chunk_steps": chunk,
        },
        "note": "yardstick → trainer's jitted chunk function over the whole epoch in one call (adds the "
        "on-device batch gather, the per-step finiteness check and diagnostics outputs) → the same "
        "in chunks of chunk_steps with a block_until_ready each (as the trainer) → the trainer's "
        "train_time_s",
    }
