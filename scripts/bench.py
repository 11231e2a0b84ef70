#!/usr/bin/env python
"""Timing benchmark of the second-order optimizers → results/bench/<device>.{json,md,png}.

    python scripts/bench.py                      # full run (~10-20 min on 2 quiet CPU cores)
    python scripts/bench.py --quick --out /tmp/b # smoke run (~1 min): small widths, few repeats, no eigh
    python scripts/bench.py --skip-slow          # skip every measurement expected to take > ~60 s
    make bench ARGS="--no-scaling --repeats 3"

Sections, each under its own key of the JSON:

1. ``parts``     paper size (784-10-10 MLP, batch 64, float32 parameters, float64 solves):
                 gradient, Hessian-vector product, GGN-vector product, CG solves of
                 Hessian-free Newton and Gauss-Newton (iterations and time per iteration, at
                 the initial parameters and after one epoch of SGD), dense Hessian
                 (``curvature.dense_hessian`` and ``jax.hessian``), Cholesky of H + 32 I,
                 eigendecomposition of H (once), and one whole optimizer step per method
                 (dense exact Newton λ=0 and λ=32, and the low-rank path when ``newton``
                 accepts ``max_rank``, with the configs' ``optimizer.max_rank``).
2. ``epoch``     one epoch (937 steps) of the real trainer (``experiment.run``, W&B offline
                 and CSV logging on), its ``train_time_s`` against a minimal jitted
                 ``lax.scan`` loop of the same optax transformation (the yardstick; also one
                 that gathers each batch from the on-device dataset, as the trainer does),
                 and the trainer's own chunk function timed in one call and in chunks.
3. ``baseline``  the straightforward implementation: a Python loop per step with a host sync
                 (``float(loss)``) and a ``wandb.log`` call every step; ``jax.hessian`` +
                 ``jnp.linalg.pinv`` for Newton (several steps at a reduced width, and one
                 step at the paper's size), ``jax.scipy.sparse.linalg.cg`` for HF/GN (whole
                 step jitted, and a variant calling ``cg`` eagerly from Python).  Speed-up of
                 our trainer over it.
4. ``scaling``   step time against hidden width × batch size, log-log plot.
5. ``environment``, ``cpu_contention`` versions, device, git commit, load average, and the CPU
                 time other processes used while each section ran.

Timing protocol: every measured function is jitted and compiled ahead of time
(``jit(f).lower(...).compile()``, reported as ``compile_s``); one warm-up call
(``warmup_s``) is excluded; the reported time is the median over repeats, each call
timed until ``jax.block_until_ready``.  Functions faster than ~10 ms are repeated until
~0.3 s has been spent (``n`` says how many calls), round-robin with the functions they
are compared with (``interleaved``); these per-call times include the dispatch overhead
of one jitted call, reported as ``parts.dispatch_overhead``.  Slow measurements stop
repeating after ~30 s; ``single_run`` ones (eigendecomposition, undamped dense Newton
step) are one call without warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_SILENT", "true")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from second_order import curvature  # noqa: E402
from second_order.suite.tracking import environment  # noqa: E402
from second_order.suite.model import MLP, cross_entropy  # noqa: E402
from second_order.optim import collect_diagnostics, gauss_newton, hessian_free, newton  # noqa: E402

NUM_CLASSES = 10
PAPER = {"sgd": {"learning_rate": 0.1}, "hessian_free": {"learning_rate": 0.5, "damping": 32.0},
         "gauss_newton": {"learning_rate": 0.5, "damping": 4.0},
         "newton_damped": {"learning_rate": 0.5, "damping": 32.0}, "newton": {"learning_rate": 0.5, "damping": 0.0}}
LOW_RANK, LOW_RANK_DAMPED = "newton_lowrank", "newton_damped_lowrank"
LABELS = {"sgd": "SGD", "hessian_free": "Hessian-free Newton", "gauss_newton": "Hessian-free Gauss-Newton",
          "newton_damped": "exact Newton λ=32 (dense)", "newton": "exact Newton λ=0 (dense)",
          LOW_RANK: "newton (low-rank), λ=0", LOW_RANK_DAMPED: "newton (low-rank), λ=32"}
CONFIG_MAX_RANK: list[int | None] = [None]  # optimizer.max_rank of configs/optimizer/newton.yaml, when set


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    quick: bool
    repeats: int
    skip_slow: bool
    cap_s: float                 # a measurement expected to take longer than this is skipped
    slow_budget_s: float         # slow measurements: stop repeating once this much was spent
    part_hidden: int             # hidden width of the "paper size" section
    batch: int
    cg_batches: int              # batches for the CG iteration statistics
    sgd_steps: int               # SGD steps before the "trained" CG statistics
    epoch_steps: int             # steps of the trainer/yardstick comparison
    trainer_repeats: int
    eager_steps: int             # steps of the eager-CG baseline
    newton_base_hidden: int      # width at which the baseline Newton (jax.hessian + pinv) runs
    newton_base_steps: int
    widths: tuple[int, ...]
    batches: tuple[int, ...]
    eigh: bool
    newton_step: bool            # measure the undamped (eigh) Newton step once
    baseline_newton_full: bool   # one baseline Newton step (jax.hessian + pinv) at the paper's size


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if q else 5)
    cap = 60.0 if args.skip_slow else args.max_measure_s
    return Settings(
        quick=q, repeats=max(1, repeats), skip_slow=args.skip_slow, cap_s=cap, slow_budget_s=5.0 if q else 30.0,
        part_hidden=2 if q else 10, batch=64,
        cg_batches=2 if q else 8, sgd_steps=100 if q else 937,
        epoch_steps=50 if q else 937, trainer_repeats=1 if q else 2,
        eager_steps=2 if q else 20,
        newton_base_hidden=1 if q else 2, newton_base_steps=3 if q else 4,
        widths=tuple(args.widths) if args.widths else ((1, 2) if q else (10, 32, 64, 128)),
        batches=tuple(args.batches) if args.batches else ((64,) if q else (64, 256, 1024)),
        eigh=not (q or args.skip_slow) and args.eigh,
        newton_step=args.newton_step and not args.skip_slow,
        baseline_newton_full=args.baseline_newton_full and not (q or args.skip_slow),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fast smoke run: small widths, few repeats, no eigh")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench", help="output directory")
    p.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR"), help="MNIST IDX directory (default $MNIST_DIR)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; quick 2)")
    p.add_argument("--skip-slow", action="store_true", help="skip every measurement expected to take > ~60 s")
    p.add_argument("--max-measure-s", type=float, default=150.0,
                   help="without --skip-slow: skip measurements expected to take longer than this (default 150)")
    p.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True, help="width × batch scaling")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="the straightforward-implementation baseline")
    p.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=True,
                   help="whole-epoch trainer vs yardstick")
    p.add_argument("--eigh", action=argparse.BooleanOptionalAction, default=True,
                   help="time the eigendecomposition of H once (never in --quick/--skip-slow)")
    p.add_argument("--newton-step", action="store_true",
                   help="always measure one whole undamped dense Newton step (its eigh path); by default it is "
                        "measured once when predicted under half of --max-measure-s, else estimated from its parts")
    p.add_argument("--baseline-newton-full", action=argparse.BooleanOptionalAction, default=True,
                   help="time one step of the baseline Newton (jax.hessian + pinv) at the paper's size "
                        "(minutes on a CPU; never in --quick/--skip-slow)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="hidden widths of the scaling section")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes of the scaling section")
    p.add_argument("--low-rank-max-rank", type=int, default=None,
                   help="max_rank of the low-rank Newton variant (default: the rank bound batch·(classes+2·hidden))")
    args = p.parse_args(argv)
    if args.mnist_dir is None:
        default = REPO.parent / "shared" / "data" / "mnist"
        if (default / "train-images-idx3-ubyte.gz").exists():
            args.mnist_dir = str(default)
    return args


# --------------------------------------------------------------------------- timing


def _now() -> float:
    return time.perf_counter()


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def measure(fn: Callable, *args: Any, repeats: int, budget_s: float | None = None, once: bool = False,
            min_total_s: float | None = None, max_calls: int = 2000) -> tuple[dict, Any]:
    """AOT-compile ``jit(fn)`` for ``args``, warm up once, time ``repeats`` calls; return (timing, output)."""
    t0 = _now()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = _now() - t0
    t0 = _now()
    out = _block(compiled(*args))
    first = _now() - t0
    if once:
        return {"median_s": first, "compile_s": compile_s, "warmup_s": None, "samples_s": [first], "n": 1,
                "single_run": True}, out
    n = repeats
    min_total_s = MIN_TOTAL_S[0] if min_total_s is None else min_total_s
    if first < 0.01:
        n = int(min(max_calls, max(repeats, math.ceil(min_total_s / max(first, 1e-6)))))
    samples: list[float] = []
    spent = 0.0
    for _ in range(n):
        if budget_s is not None and samples and spent + samples[-1] > budget_s:
            break
        t0 = _now()
        out = _block(compiled(*args))
        samples.append(_now() - t0)
        spent += samples[-1]
    timing = {"median_s": statistics.median(samples), "compile_s": compile_s, "warmup_s": first,
              "n": len(samples), "min_s": min(samples), "max_s": max(samples)}
    if len(samples) <= 20:
        timing["samples_s"] = samples
    return timing, out


def measure_group(items: dict[str, tuple[Callable, tuple]], *, repeats: int, min_total_s: float,
                  max_rounds: int = 20000) -> dict[str, dict]:
    """Time several fast functions round-robin (A B C A B C …) so that transients hit them alike.

    Each is compiled ahead of time and warmed up once; rounds continue until every function
    has been timed for ``min_total_s`` seconds in all (at least ``repeats`` rounds).
    """
    compiled, out = {}, {}
    for name, (fn, args) in items.items():
        t0 = _now()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s = _now() - t0
        t0 = _now()
        _block(compiled[name](*args))
        out[name] = {"compile_s": compile_s, "warmup_s": _now() - t0}
    samples: dict[str, list[float]] = {name: [] for name in items}
    spent = 0.0
    rounds = 0
    while rounds < max_rounds and (rounds < repeats or spent < min_total_s * len(items)):
        for name, (_, args) in items.items():
            t0 = _now()
            _block(compiled[name](*args))
            dt = _now() - t0
            samples[name].append(dt)
            spent += dt
        rounds += 1
    for name, xs in samples.items():
        out[name].update(median_s=statistics.median(xs), n=len(xs), min_s=min(xs), max_s=max(xs),
                         interleaved=list(items))
    return out


MIN_TOTAL_S = [0.3]  # fast functions are repeated until this many seconds were spent (--quick: 0.1)


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def med(t: Any) -> float | None:
    return t.get("median_s") if isinstance(t, dict) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


class CpuMonitor:
    """CPU time used by other processes while a section ran (/proc/stat busy − this process)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def snapshot(self) -> tuple[float, float | None, float]:
        busy = None
        try:
            f = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(f[:8]) - f[3] - f[4]) / self.tick  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return _now(), busy, t.user + t.system + t.children_user + t.children_system

    def since(self, start: tuple[float, float | None, float]) -> dict:
        end = self.snapshot()
        wall, own = end[0] - start[0], end[2] - start[2]
        out = {"wall_s": wall, "own_cpu_s": own, "load_average_1m": round(os.getloadavg()[0], 2)}
        if start[1] is not None and end[1] is not None:
            foreign = max(0.0, (end[1] - start[1]) - own)
            out.update(foreign_cpu_s=foreign, foreign_cpu_share=foreign / max(wall * (os.cpu_count() or 1), 1e-9))
        return out


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- problem


class Problem:
    """MNIST + MLP exactly as the trainer sets them up (same init and batch order for a seed)."""

    def __init__(self, data: Any, hidden: int, batch: int, seed: int = 0):
        self.hidden, self.batch = hidden, batch
        self.model = MLP(hidden=(hidden,), num_classes=NUM_CLASSES)
        self.x_all = jax.device_put(data.train_images)
        self.y_all = jax.device_put(data.train_labels)
        n_train = self.x_all.shape[0]
        self.steps_per_epoch = n_train // batch
        init_key, self.data_key = jax.random.split(jax.random.PRNGKey(seed))
        self.params = self.model.init(init_key, self.x_all[:1])["params"]
        self.n = int(sum(p.size for p in jax.tree_util.tree_leaves(self.params)))

    def perm(self, epoch: int = 0) -> jax.Array:
        """The trainer's batch indices of ``epoch``: (steps_per_epoch, batch)."""
        n_train = self.x_all.shape[0]
        return jax.random.permutation(jax.random.fold_in(self.data_key, epoch), n_train)[
            : self.steps_per_epoch * self.batch].reshape(self.steps_per_epoch, self.batch)

    def batch_xy(self, epoch: int = 0, i: int = 0) -> tuple[jax.Array, jax.Array]:
        idx = self.perm(epoch)[i]
        return self.x_all[idx], self.y_all[idx]

    def fns(self, x, y):
        apply = self.model.apply

        def predict_fn(p):
            return apply({"params": p}, x)

        def output_loss_fn(z):
            return cross_entropy(z, y)

        def value_fn(p):
            return output_loss_fn(predict_fn(p))

        return value_fn, predict_fn, output_loss_fn

    def step_fn(self, tx) -> Callable:
        """One optimizer step as in the trainer: value_and_grad, tx.update, apply_updates."""

        def step(params, opt_state, x, y):
            value_fn, predict_fn, output_loss_fn = self.fns(x, y)
            loss, grads = jax.value_and_grad(value_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params, value_fn=value_fn,
                                           predict_fn=predict_fn, output_loss_fn=output_loss_fn)
            return optax.apply_updates(params, updates), opt_state, loss, collect_diagnostics(opt_state)

        return step


def low_rank_supported() -> bool:
    return "max_rank" in inspect.signature(newton).parameters


def low_rank_bound(batch: int, hidden: int) -> int:
    """Rank bound of a one-hidden-layer ReLU MLP's mini-batch Hessian: batch·(classes + 2·hidden)."""
    return batch * (NUM_CLASSES + 2 * hidden)


def resolve_max_rank(arg: int | None, batch: int, hidden: int) -> int:
    """--low-rank-max-rank, else the configs' optimizer.max_rank capped by the rank bound, else the bound."""
    if arg:
        return int(arg)
    bound = low_rank_bound(batch, hidden)
    return min(CONFIG_MAX_RANK[0], bound) if CONFIG_MAX_RANK[0] else bound


def make_tx(method: str, *, max_rank: int | None = None) -> optax.GradientTransformationExtraArgs:
    hp = PAPER[{LOW_RANK: "newton", LOW_RANK_DAMPED: "newton_damped"}.get(method, method)]
    if method == "sgd":
        tx = optax.sgd(hp["learning_rate"])
    elif method == "hessian_free":
        tx = hessian_free(hp["learning_rate"], hp["damping"])
    elif method == "gauss_newton":
        tx = gauss_newton(hp["learning_rate"], hp["damping"])
    elif method in ("newton", "newton_damped"):
        tx = newton(hp["learning_rate"], hp["damping"])
    elif method in (LOW_RANK, LOW_RANK_DAMPED):
        tx = newton(hp["learning_rate"], hp["damping"], max_rank=max_rank)
    else:
        raise ValueError(method)
    return optax.with_extra_args_support(tx)


def diag_summary(diags: dict) -> dict:
    out = {}
    for k, v in diags.items():
        v = np.asarray(v)
        if v.ndim == 0:
            out[k] = v.item() if np.isfinite(v) or v.dtype.kind == "i" else None
    return out


# --------------------------------------------------------------------------- 1. parts


def section_parts(data, s: Settings, max_rank_arg: int | None) -> dict:
    prob = Problem(data, s.part_hidden, s.batch)
    n = prob.n
    log(f"parts: hidden={s.part_hidden} batch={s.batch} n={n}")
    x, y = prob.batch_xy(0, 0)
    value_fn, predict_fn, output_loss_fn = prob.fns(x, y)
    p32 = prob.params
    p64 = curvature.tree_cast(p32, jnp.float64)
    flat64, unravel = ravel_pytree(p64)
    v64 = unravel(jax.random.normal(jax.random.PRNGKey(1), flat64.shape, jnp.float64))
    parts: dict[str, Any] = {}
    R, cap = s.repeats, s.cap_s


    def grad_fn(p, x, y):
        return jax.value_and_grad(lambda q: cross_entropy(prob.model.apply({"params": q}, x), y))(p)

    def hvp_fn(p, v, x, y):
        vf, _, _ = prob.fns(x, y)
        return curvature.hvp(vf, p, v)

    def ggn_fn(p, v, x, y):
        _, pf, of = prob.fns(x, y)
        return curvature.ggn_vp(pf, of, p, v)

    parts.update(measure_group({
        "dispatch_overhead": (lambda a: a + 1, (jnp.float32(0),)),
        "gradient": (grad_fn, (p32, x, y)),
        "gradient_f64": (grad_fn, (p64, x, y)),
        "hvp": (hvp_fn, (p64, v64, x, y)),
        "ggn_vp": (ggn_fn, (p64, v64, x, y)),
    }, repeats=R, min_total_s=MIN_TOTAL_S[0] * 3))
    log(f"  gradient {med(parts['gradient']) * 1e3:.3f} ms, hvp {med(parts['hvp']) * 1e3:.3f} ms, "
        f"ggn {med(parts['ggn_vp']) * 1e3:.3f} ms")

    # -- CG solves (the optimizers' own update, given the gradient) at init and after SGD.
    trained = train_sgd(prob, s.sgd_steps)
    cg = {}
    for method in ("hessian_free", "gauss_newton"):
        cg[method] = cg_stats(prob, method, {"init": (p32, 0), "trained": (trained["params"], 1)}, s)
        for label, c in cg[method].items():
            log(f"  CG {method} @{label}: {c['iterations_median']} it, {c['time_per_iteration_s'] * 1e3:.3f} ms/it")
    cg_info = {"sgd_steps_before_trained": s.sgd_steps, "sgd_loss_after": trained["loss"], **cg}

    # -- dense Hessian, Cholesky, eigh.
    def dense_fn(p, x, y):
        vf, _, _ = prob.fns(x, y)
        return curvature.dense_hessian(vf, p)

    def jax_hessian_fn(w, x, y):
        vf, _, _ = prob.fns(x, y)
        return jax.hessian(lambda w: vf(unravel(w)))(w)

    parts["dense_hessian"], h = measure(dense_fn, p64, x, y, repeats=R, budget_s=s.slow_budget_s)
    log(f"  dense_hessian {med(parts['dense_hessian']):.3f} s")
    parts["jax_hessian"], h2 = measure(jax_hessian_fn, flat64, x, y, repeats=R, budget_s=s.slow_budget_s)
    log(f"  jax.hessian {med(parts['jax_hessian']):.3f} s")
    hessian_check = {"max_abs_diff_dense_vs_jax_hessian": float(jnp.max(jnp.abs(h - h2))),
                     "max_abs_entry": float(jnp.max(jnp.abs(h)))}
    del h2
    a = h + 32.0 * jnp.eye(n, dtype=h.dtype)
    parts["cholesky"], _ = measure(jnp.linalg.cholesky, a, repeats=R, budget_s=s.slow_budget_s)
    log(f"  cholesky(H+32I) {med(parts['cholesky']):.3f} s")
    del a
    if s.eigh:
        log("  eigh(H): one call, expect minutes on a CPU ...")
        parts["eigh"], (w, _) = measure(jnp.linalg.eigh, h, repeats=1, once=True)
        w = np.asarray(w)
        hessian_check.update(min_eigenvalue=float(w[0]), max_eigenvalue=float(w[-1]),
                             numerical_rank=int(np.sum(np.abs(w) > 10 * n * np.finfo(np.float64).eps * np.abs(w).max())))
        log(f"  eigh(H) {med(parts['eigh']):.1f} s")
    else:
        parts["eigh"] = skipped("--quick" if s.quick else ("--skip-slow" if s.skip_slow else "--no-eigh"))
    del h

    # -- whole optimizer steps.
    methods = ["sgd", "hessian_free", "gauss_newton", "newton_damped", "newton"]
    max_rank = None
    if low_rank_supported():
        max_rank = resolve_max_rank(max_rank_arg, s.batch, s.part_hidden)
        if max_rank < n:
            methods += [LOW_RANK] if s.quick else [LOW_RANK_DAMPED, LOW_RANK]
        else:
            max_rank = None
    steps: dict[str, Any] = {}
    # Fast steps: timed round-robin together with the gradient, so that step/gradient is not skewed
    # by drifts between separately timed functions.
    fast = ("sgd", "hessian_free", "gauss_newton")
    txs = {m: make_tx(m) for m in fast}
    group = measure_group({"gradient": (grad_fn, (p32, x, y)),
                           **{m: (prob.step_fn(txs[m]), (p32, txs[m].init(p32), x, y)) for m in fast}},
                          repeats=R, min_total_s=MIN_TOTAL_S[0] * 3)
    parts["gradient_with_steps"] = group.pop("gradient")
    for m in fast:
        out = jax.jit(prob.step_fn(txs[m]))(p32, txs[m].init(p32), x, y)
        steps[m] = {**group[m], "diagnostics": diag_summary(out[3])}
        log(f"  step {m}: {med(steps[m]) * 1e3:.3f} ms  {steps[m]['diagnostics']}")
    for method in methods:
        if method in fast:
            continue
        if method == "newton":
            pred = (sum(med(parts[k]) for k in ("gradient", "dense_hessian", "cholesky", "eigh"))
                    if med(parts["eigh"]) is not None else None)
            if not s.newton_step and (pred is None or pred > s.cap_s / 2):
                steps[method] = None  # estimated from its parts below
                continue
        tx = make_tx(method, max_rank=max_rank)
        st = tx.init(p32)
        once = method == "newton"  # its eigh path: one call
        t, out = measure(prob.step_fn(tx), p32, st, x, y, repeats=R, budget_s=s.slow_budget_s, once=once)
        t["diagnostics"] = diag_summary(out[3])
        if method in (LOW_RANK, LOW_RANK_DAMPED):
            t["max_rank"] = max_rank
        steps[method] = t
        log(f"  step {method}: {med(t) * 1e3:.3f} ms  {t['diagnostics']}")
    if steps["newton"] is None:
        if med(parts["eigh"]) is not None:
            est = sum(med(parts[k]) for k in ("gradient", "dense_hessian", "cholesky", "eigh"))
            steps["newton"] = {"median_s": est, "estimated_from_parts": True,
                               "note": "not run (predicted over half the --max-measure-s cap; --newton-step "
                                       "measures it): gradient + dense_hessian + cholesky (fails: H indefinite) + eigh"}
        else:
            steps["newton"] = skipped("needs the eigh timing (skipped) or --newton-step")

    g32, g64 = med(parts["gradient"]), med(parts["gradient_f64"])
    ratios = {
        "hvp_over_gradient": ratio(med(parts["hvp"]), g32),
        "hvp_over_gradient_f64": ratio(med(parts["hvp"]), g64),
        "ggn_over_gradient": ratio(med(parts["ggn_vp"]), g32),
        "ggn_over_gradient_f64": ratio(med(parts["ggn_vp"]), g64),
        "step_over_gradient": {m: ratio(med(t), med(parts["gradient_with_steps"]) if m in fast else g32)
                               for m, t in steps.items()},
        "newton_damped_step_over_hessian_plus_cholesky":
            ratio(med(steps["newton_damped"]), med(parts["dense_hessian"]) + med(parts["cholesky"])),
        "jax_hessian_over_dense_hessian": ratio(med(parts["jax_hessian"]), med(parts["dense_hessian"])),
        "cg_iteration_over_hvp": {m: ratio(cg[m]["init"]["time_per_iteration_s"],
                                           med(parts["hvp"] if m == "hessian_free" else parts["ggn_vp"]))
                                  for m in cg},
    }
    if LOW_RANK in steps:
        ratios["newton_lowrank_over_newton_damped"] = ratio(med(steps[LOW_RANK]), med(steps["newton_damped"]))
        ratios["newton_over_newton_lowrank"] = ratio(med(steps["newton"]), med(steps[LOW_RANK]))
        ratios["newton_damped_over_newton_damped_lowrank"] = ratio(med(steps["newton_damped"]),
                                                                   med(steps.get(LOW_RANK_DAMPED)))
    return {"hidden": [s.part_hidden], "batch": s.batch, "param_count": n, "param_dtype": "float32",
            "solve_dtype": "float64", "x64": bool(jax.config.jax_enable_x64), "low_rank_available": low_rank_supported(),
            "parts": parts, "cg": cg_info, "steps": steps, "ratios": ratios, "hessian_check": hessian_check}


def train_sgd(prob: Problem, steps: int) -> dict:
    tx = make_tx("sgd")
    step = prob.step_fn(tx)
    idx = prob.perm(0)[:steps]

    @jax.jit
    def run(params, opt_state, idx):
        def body(carry, i):
            p, st = carry
            p, st, loss, _ = step(p, st, prob.x_all[i], prob.y_all[i])
            return (p, st), loss

        (p, _), losses = jax.lax.scan(body, (params, opt_state), idx)
        return p, losses

    params, losses = run(prob.params, tx.init(prob.params), idx)
    return {"params": params, "loss": float(jnp.mean(losses[-50:]))}


def cg_stats(prob: Problem, method: str, states: dict, s: Settings) -> dict:
    """CG iterations and time of the optimizer's update on ``s.cg_batches`` batches, per parameter state."""
    tx = make_tx(method)

    def update_only(params, opt_state, grads, x, y):
        value_fn, predict_fn, output_loss_fn = prob.fns(x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value_fn=value_fn,
                                       predict_fn=predict_fn, output_loss_fn=output_loss_fn)
        return updates, collect_diagnostics(opt_state)

    grad_jit = jax.jit(lambda p, x, y: jax.grad(prob.fns(x, y)[0])(p))
    compiled = None
    out = {}
    for label, (params, epoch) in states.items():
        st = tx.init(params)
        x0, y0 = prob.batch_xy(epoch, 0)
        if compiled is None:
            t0 = _now()
            compiled = jax.jit(update_only).lower(params, st, grad_jit(params, x0, y0), x0, y0).compile()
            compile_s = _now() - t0
        iters, times = [], []
        for i in range(s.cg_batches):
            x, y = prob.batch_xy(epoch, i)
            g = _block(grad_jit(params, x, y))
            _, d = _block(compiled(params, st, g, x, y))  # warm-up
            samples = []
            for _ in range(max(s.repeats, 5)):
                t0 = _now()
                _block(compiled(params, st, g, x, y))
                samples.append(_now() - t0)
            iters.append(int(d["cg_iterations"]))
            times.append(statistics.median(samples))
        per_iter = [t / max(k, 1) for t, k in zip(times, iters)]
        out[label] = {"batches": s.cg_batches, "epoch_of_batches": epoch, "iterations": iters,
                      "iterations_median": float(np.median(iters)), "solve_s": times,
                      "solve_median_s": float(np.median(times)), "time_per_iteration_s": float(np.median(per_iter)),
                      "compile_s": compile_s,
                      "note": "solve = the optimizer's update given the gradient "
                              "(float64 cast, linearisation, CG, cast back)"}
    return out


# --------------------------------------------------------------------------- trainer runs


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def trainer_run(method: str, steps: int, mnist_dir: str, workdir: Path, *, hidden: int = 10,
                tag: str = "", overrides: tuple[str, ...] = ()) -> dict:
    """One real trainer run (experiment.run, W&B offline + CSV); its summary.json."""
    from second_order.suite import experiment

    run_dir = Path(tempfile.mkdtemp(prefix=f"{method}{tag}-", dir=workdir))
    shutil.rmtree(run_dir)
    cfg = compose([f"optimizer={method}", f"data.dir={mnist_dir}", f"trainer.max_steps={steps}",
                   f"model.hidden=[{hidden}]", "trainer.progress=false", "logger.wandb.mode=offline",
                   "experiment_name=bench", *overrides])
    t0 = _now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = experiment.run(cfg, run_dir)
    summary["wall_s"] = _now() - t0
    summary["run_dir"] = str(run_dir)
    from second_order.suite.tracking import runs

    table = runs.read_table(run_dir / runs.STEPS_FILE)
    summary["_losses"] = np.asarray(table["train_loss"], dtype=np.float64)
    summary["_time_s"] = np.asarray(table["time_s"], dtype=np.float64)
    if "solve_path" in table:
        summary["_solve_path"] = np.asarray(table["solve_path"]).astype(int).tolist()
    summary["optimizer_config"] = {k: v for k, v in cfg["optimizer"].items() if k != "_target_"}
    return summary


def section_epoch(data, s: Settings, mnist_dir: str, workdir: Path, cache: dict) -> dict:
    prob = Problem(data, 10, 64)
    steps = s.epoch_steps
    out: dict[str, Any] = {"steps": steps, "hidden": [10], "batch": 64, "trainer_repeats": s.trainer_repeats,
                           "goal_ratio": 1.2, "methods": {},
                           "note": "yardstick: lax.scan over the epoch's batches gathered beforehand (outside the "
                                   "timing), data on the device; yardstick_gather: the same but each step gathers "
                                   "its batch from the on-device dataset (as the trainer does)"}
    idx = prob.perm(0)[:steps]
    xb, yb = _block((prob.x_all[idx], prob.y_all[idx]))  # the epoch's batches, on the device
    for method in ("sgd", "hessian_free", "gauss_newton"):
        runs_ = [trainer_run(method, steps, mnist_dir, workdir, tag=f"-epoch{r}") for r in range(s.trainer_repeats)]
        cache[(method, 10, steps)] = runs_
        train_times = [r["train_time_s"] for r in runs_]
        tx = make_tx(method)
        step = prob.step_fn(tx)

        def yardstick(params, opt_state, xb, yb):
            def body(carry, b):
                p, st = carry
                p, st, loss, diags = step(p, st, b[0], b[1])
                return (p, st), (loss, diags)

            (p, _), (losses, diags) = jax.lax.scan(body, (params, opt_state), (xb, yb))
            return p, losses, diags

        t, (_, losses, diags) = measure(yardstick, prob.params, tx.init(prob.params), xb, yb,
                                        repeats=max(3, min(s.repeats, 5)), budget_s=s.slow_budget_s)

        def yardstick_gather(params, opt_state, x_all, y_all, idx):
            def body(carry, i):
                p, st = carry
                p, st, loss, diags = step(p, st, x_all[i], y_all[i])
                return (p, st), loss

            return jax.lax.scan(body, (params, opt_state), idx)

        tg, _ = measure(yardstick_gather, prob.params, tx.init(prob.params), prob.x_all, prob.y_all, idx,
                        repeats=max(3, min(s.repeats, 5)), budget_s=s.slow_budget_s)
        losses = np.asarray(losses, dtype=np.float64)
        trainer_losses = runs_[0]["_losses"]
        m = {
            "trainer_train_time_s": train_times,
            "trainer_median_s": float(np.median(train_times)),
            "trainer_compile_s": [r["compile_time_s"] for r in runs_],
            "trainer_other_s": {k: [r[k] for r in runs_] for k in ("eval_time_s", "log_time_s", "checkpoint_time_s", "wall_s")},
            "trainer_status": [r["status"] for r in runs_],
            "yardstick": t,
            "ratio": float(np.median(train_times)) / med(t),
            "yardstick_gather": tg,
            "ratio_vs_yardstick_gather": float(np.median(train_times)) / med(tg),
            "per_step_trainer_s": float(np.median(train_times)) / steps,
            "per_step_yardstick_s": med(t) / steps,
            "same_losses_max_abs_diff": float(np.max(np.abs(trainer_losses - losses))) if len(trainer_losses) == len(losses) else None,
            "final_loss": float(np.mean(losses[-50:])),
        }
        if "cg_iterations" in diags:
            m["cg_iterations_mean"] = float(np.mean(np.asarray(diags["cg_iterations"])))
        if not s.quick:
            m["breakdown"] = trainer_breakdown(prob, tx, idx, s)
        out["methods"][method] = m
        log(f"epoch {method}: trainer {m['trainer_median_s']:.3f} s, yardstick {med(t):.3f} s, ratio {m['ratio']:.2f}; "
            f"yardstick with on-device gather {med(tg):.3f} s, ratio {m['ratio_vs_yardstick_gather']:.2f}")
    return out


def trainer_breakdown(prob: Problem, tx, idx: jax.Array, s: Settings) -> dict:
    """Where the trainer's time goes beyond the yardstick: its own jitted chunk function
    (batch gather on the device, finiteness check and per-step diagnostics as outputs) run
    over the whole epoch in one call, and in chunks of ``chunk_steps`` like the trainer."""
    from second_order.suite.training.trainer import TrainSettings, _make_chunk_fn

    chunk = TrainSettings(epochs=1, batch_size=prob.batch).chunk_steps
    chunk_fn = _make_chunk_fn(prob.model.apply, tx)
    st = tx.init(prob.params)
    args = (prob.params, st, prob.x_all, prob.y_all)
    one, _ = measure(chunk_fn, *args, idx, repeats=3, budget_s=s.slow_budget_s)
    sizes = sorted({min(chunk, len(idx) - i) for i in range(0, len(idx), chunk)})
    compiled = {k: chunk_fn.lower(*args, idx[:k]).compile() for k in sizes}

    def epoch_in_chunks():
        params, opt_state = prob.params, st
        for i in range(0, len(idx), chunk):
            sl = idx[i: i + chunk]
            params, opt_state, losses, ok, diags = _block(compiled[sl.shape[0]](params, opt_state, prob.x_all,
                                                                                prob.y_all, sl))
        return params

    epoch_in_chunks()  # warm-up
    samples = []
    for _ in range(3):
        t0 = _now()
        epoch_in_chunks()
        samples.append(_now() - t0)
    return {"trainer_chunk_fn_one_call": one,
            "trainer_chunk_fn_in_chunks": {"median_s": statistics.median(samples), "samples_s": samples,
                                           "chunk_steps": chunk},
            "note": "yardstick → trainer's jitted chunk function over the whole epoch in one call (adds the "
                    "on-device batch gather, the per-step finiteness check and diagnostics outputs) → the same "
                    "in chunks of chunk_steps with a block_until_ready each (as the trainer) → the trainer's "
                    "train_time_s"}


# --------------------------------------------------------------------------- 3. baseline


def section_baseline(data, s: Settings, mnist_dir: str, workdir: Path, cache: dict) -> dict:
    """The straightforward implementation: Python loop, host sync and wandb.log every step."""
    import wandb

    out: dict[str, Any] = {
        "description": "Python for-loop over steps; batches gathered on the host (numpy) each step; "
                       "float(loss) host sync and wandb.log (offline) every step; float32 parameters, "
                       "float64 solves. Newton: jax.hessian + jnp.linalg.pinv per step (whole step jitted). "
                       "HF/GN: jax.scipy.sparse.linalg.cg with curvature.hvp / ggn_vp products, "
                       "variant 'jit' = the whole step under jax.jit, variant 'eager' = cg called from "
                       "Python each step (it re-traces and re-compiles its while_loop every step). "
                       "Timed: the loop after compilation (AOT for jitted steps; a warm-up step for the eager "
                       "variant), wandb.init/finish excluded.",
        "methods": {}}
    x_np, y_np = np.asarray(data.train_images), np.asarray(data.train_labels)

    def loop(step, params, perm, steps, name):
        run = wandb.init(mode="offline", dir=str(workdir), project="second-order-bench", name=name,
                         settings=wandb.Settings(silent=True))
        try:
            t0 = _now()
            if hasattr(step, "lower"):  # jitted: compile ahead of time, no extra step
                step = step.lower(params, x_np[perm[0]], y_np[perm[0]]).compile()
            else:  # eager pieces: one warm-up step compiles the jitted parts (discarded)
                float(step(params, x_np[perm[0]], y_np[perm[0]])[1])
            compile_s = _now() - t0
            t0 = _now()
            marks = [t0]
            for i in range(steps):
                idx = perm[i]
                params, loss = step(params, x_np[idx], y_np[idx])
                loss = float(loss)
                run.log({"train/loss": loss, "step": i + 1})
                marks.append(_now())
            total = _now() - t0
        finally:
            run.finish()
        per = np.diff(marks)
        return {"steps": steps, "total_s": total, "per_step_s": total / steps, "compile_s": compile_s,
                "median_step_s": float(np.median(per)), "step_s": [float(v) for v in per] if steps <= 50 else None,
                "final_loss": loss}

    def ours(method, hidden, steps, overrides=()):
        key = (method, hidden, steps, *overrides)
        if key not in cache:
            cache[key] = [trainer_run(method, steps, mnist_dir, workdir, hidden=hidden, tag="-base",
                                      overrides=tuple(overrides))]
        runs_ = cache[key]
        t = float(np.median([r["train_time_s"] for r in runs_]))
        out = {"train_time_s": t, "steps": steps, "per_step_s": t / steps, "hidden": [hidden],
               "optimizer_config": runs_[0]["optimizer_config"]}
        if "_solve_path" in runs_[0]:
            out["solve_path"] = runs_[0]["_solve_path"]
        times = runs_[0]["_time_s"]
        if len(times) == steps and steps <= 50:  # exact Newton logs one chunk (= one step) per row
            per = np.diff(np.concatenate([[0.0], times]))
            out.update(median_step_s=float(np.median(per)), step_s=[float(v) for v in per])
        return out

    for method in ("sgd", "hessian_free", "gauss_newton"):
        prob = Problem(data, 10, 64)
        perm = np.asarray(prob.perm(0))
        steps = s.epoch_steps
        variants = {"jit": make_baseline_step(prob, method, eager=False)}
        if method != "sgd":
            variants["eager"] = make_baseline_step(prob, method, eager=True)
        m = {"hidden": [10], "batch": 64, "ours": ours(method, 10, steps)}
        for vname, step in variants.items():
            k = steps if vname == "jit" else s.eager_steps
            r = loop(step, prob.params, perm, k, f"baseline-{method}-{vname}")
            r["speedup"] = r["per_step_s"] / m["ours"]["per_step_s"]
            m[vname] = r
            log(f"baseline {method}/{vname}: {r['per_step_s'] * 1e3:.3f} ms/step over {k} steps, "
                f"ours {m['ours']['per_step_s'] * 1e3:.3f} ms/step, speed-up {r['speedup']:.1f}x")
        m["speedup"] = m["jit"]["speedup"]
        out["methods"][method] = m

    # Exact Newton at a reduced width, dense in both (our trainer with optimizer.max_rank=null).
    hb = s.newton_base_hidden
    dense = ("optimizer.max_rank=null",) if low_rank_supported() and CONFIG_MAX_RANK[0] else ()
    cases = [(method, hb, s.newton_base_steps, dense) for method in (("newton",) if s.quick else ("newton", "newton_damped"))]
    # ... and one step of the straightforward λ=0 Newton at the paper's size against our trainer as configured.
    if s.baseline_newton_full:
        cases.append(("newton", 10, 1, ()))
    for method, hidden, steps, overrides in cases:
        prob = Problem(data, hidden, 64)
        perm = np.asarray(prob.perm(0))
        key = method if hidden == hb else f"{method}_paper_size"
        ours_steps = max(steps, 3)
        m = {"hidden": [hidden], "batch": 64, "param_count": prob.n,
             "ours": ours(method, hidden, ours_steps, overrides)}
        if hidden == hb:
            m["note"] = (f"at hidden width {hb} ({prob.n} parameters), not the paper's 10 (7,960), so that "
                         f"several steps fit the time budget; ours with the dense path too ({' '.join(overrides) or 'as configured'})")
        else:
            m["note"] = ("paper size, ONE step of jax.hessian + pinv (no warm-up: compiled ahead of time); ours = "
                         f"the trainer as configured ({m['ours']['optimizer_config']}), median of {ours_steps} steps")
        r = loop(make_baseline_step(prob, method, eager=False), prob.params, perm, steps, f"baseline-{key}")
        # Few steps of seconds each: compare medians of the per-step times (the trainer's first
        # call of a compiled LAPACK-heavy step can be much slower than the next ones).
        r["speedup"] = r["median_step_s"] / m["ours"].get("median_step_s", m["ours"]["per_step_s"])
        r["speedup_mean"] = r["per_step_s"] / m["ours"]["per_step_s"]
        m["jit"] = r
        m["speedup"] = r["speedup"]
        out["methods"][key] = m
        log(f"baseline {key} @hidden {hidden}: {r['median_step_s']:.3f} s/step over {steps} step(s), "
            f"ours {m['ours'].get('median_step_s', m['ours']['per_step_s']):.3f} s/step (medians), "
            f"speed-up {r['speedup']:.1f}x")
    return out


def make_baseline_step(prob: Problem, method: str, eager: bool) -> Callable:
    hp = PAPER[method]
    lr = hp["learning_rate"]
    apply = prob.model.apply

    def loss_fn(p, x, y):
        return cross_entropy(apply({"params": p}, x), y)

    def apply_dir(params, d):
        return jax.tree_util.tree_map(lambda p, di: p - (lr * di).astype(p.dtype), params, d)

    if method == "sgd":
        @jax.jit
        def sgd_step(params, x, y):
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            return apply_dir(params, g), loss

        return sgd_step

    lam = hp["damping"]
    if method in ("newton", "newton_damped"):
        @jax.jit
        def newton_step(params, x, y):
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            w, unravel = ravel_pytree(curvature.tree_cast(params, jnp.float64))
            gf, _ = ravel_pytree(curvature.tree_cast(g, jnp.float64))
            h = jax.hessian(lambda w: loss_fn(unravel(w), x, y))(w)
            d = jnp.linalg.pinv(h + lam * jnp.eye(w.shape[0], dtype=w.dtype)) @ gf
            return apply_dir(params, unravel(d)), loss

        return newton_step

    def product(p64, v, x, y):
        if method == "hessian_free":
            return curvature.hvp(lambda q: loss_fn(q, x, y), p64, v)
        return curvature.ggn_vp(lambda q: apply({"params": q}, x), lambda z: cross_entropy(z, y), p64, v)

    def solve(p64, g64, x, y, matvec_fn):
        mv = lambda v: jax.tree_util.tree_map(lambda a, b: a + lam * b, matvec_fn(p64, v, x, y), v)  # noqa: E731
        d, _ = jax.scipy.sparse.linalg.cg(mv, g64, tol=1e-5)
        return d

    if not eager:
        @jax.jit
        def cg_step(params, x, y):
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            d = solve(curvature.tree_cast(params, jnp.float64), curvature.tree_cast(g, jnp.float64), x, y, product)
            return apply_dir(params, d), loss

        return cg_step

    grad_jit = jax.jit(jax.value_and_grad(loss_fn))
    product_jit = jax.jit(product)
    update_jit = jax.jit(apply_dir)

    def eager_step(params, x, y):
        loss, g = grad_jit(params, x, y)
        d = solve(curvature.tree_cast(params, jnp.float64), curvature.tree_cast(g, jnp.float64), x, y, product_jit)
        return update_jit(params, d), loss

    return eager_step


# --------------------------------------------------------------------------- 4. scaling


def section_scaling(data, s: Settings, parts: dict | None, max_rank_arg: int | None) -> dict:
    rows: list[dict] = []
    notes: list[str] = []
    mem_avail = available_memory_bytes()
    # Calibration for the skip decisions (from the "parts" section when it ran).
    cal = None
    if parts is not None:
        pt = parts["parts"]
        cal = {"n": parts["param_count"], "batch": parts["batch"], "hessian_s": med(pt["dense_hessian"]),
               "cholesky_s": med(pt["cholesky"]), "gradient_s": med(pt["gradient"]),
               "lowrank_s": med(parts["steps"].get(LOW_RANK)), "lowrank_k": (parts["steps"].get(LOW_RANK) or {}).get("max_rank")}
    methods = ["sgd", "hessian_free", "gauss_newton", "newton_damped"] + ([LOW_RANK] if low_rank_supported() else [])
    R = min(s.repeats, 3)
    for hidden in s.widths:
        for batch in s.batches:
            prob = Problem(data, hidden, batch)
            n = prob.n
            reuse = parts is not None and hidden == parts["hidden"][0] and batch == parts["batch"]
            x, y = prob.batch_xy(0, 0)
            if reuse:
                grad_t = parts["parts"]["gradient"]
            else:
                grad_t, _ = measure(lambda p, x, y: jax.value_and_grad(prob.fns(x, y)[0])(p), prob.params, x, y, repeats=R)
            for method in methods:
                row = {"hidden": hidden, "batch": batch, "param_count": n, "method": method}
                if reuse and med(parts["steps"].get(method)) is not None:
                    row.update(step=parts["steps"][method], gradient_s=med(grad_t), reused_from="parts")
                    rows.append(row)
                    continue
                max_rank = None
                why = None
                if method == "newton_damped":
                    why = newton_skip(n, batch, cal, s.cap_s, mem_avail)
                elif method == LOW_RANK:
                    # The rank bound itself (not a smaller configured max_rank): exact, never the dense fallback.
                    max_rank = max_rank_arg or low_rank_bound(batch, hidden)
                    why = lowrank_skip(n, batch, max_rank, cal, s.cap_s, mem_avail)
                if why:
                    row["step"] = skipped(why)
                    rows.append(row)
                    notes.append(f"{LABELS[method]} at hidden {hidden}, batch {batch} (n={n}): {why}")
                    continue
                tx = make_tx(method, max_rank=max_rank)
                t, out = measure(prob.step_fn(tx), prob.params, tx.init(prob.params), x, y, repeats=R, budget_s=s.slow_budget_s)
                t["diagnostics"] = diag_summary(out[3])
                if max_rank:
                    t["max_rank"] = max_rank
                row.update(step=t, gradient_s=med(grad_t))
                rows.append(row)
                log(f"scaling hidden={hidden} batch={batch} n={n} {method}: {med(t) * 1e3:.3f} ms")
    return {"widths": list(s.widths), "batches": list(s.batches), "methods": methods, "rows": rows, "notes": notes,
            "cap_s": s.cap_s}


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def newton_skip(n: int, batch: int, cal: dict | None, cap_s: float, mem: int) -> str | None:
    need = 4 * n * n * 8  # H, H + λI, its Cholesky factor, headroom
    if need > 0.5 * mem:
        return f"n²-sized float64 matrices need ~{need / 2**30:.1f} GiB (> half of {mem / 2**30:.1f} GiB available)"
    if cal is None:
        return None if n <= 4000 else "no calibration (parts section not run)"
    pred = cal["hessian_s"] * (n / cal["n"]) ** 2 * (batch / cal["batch"]) + cal["cholesky_s"] * (n / cal["n"]) ** 3
    if 2 * pred > cap_s:
        return f"predicted {pred:.0f} s per step (dense Hessian ∝ batch·n², Cholesky ∝ n³), over the {cap_s:.0f} s cap"
    return None


def lowrank_skip(n: int, batch: int, k: int, cal: dict | None, cap_s: float, mem: int) -> str | None:
    if k * 4 > n:
        return (f"rank bound {k} is not ≪ n = {n}: the low-rank path cannot pay off (and a smaller max_rank "
                "may fail the rank check and fall back to the dense path)")
    if 6 * n * (k + 8) * 8 > 0.5 * mem:
        return "n×k sketches do not fit in memory"
    if 4 * n * n * 8 > 0.5 * mem:  # the compiled step also holds the dense fallback (when the rank check fails)
        return (f"its dense fallback needs n²-sized float64 matrices, ~{4 * n * n * 8 / 2**30:.1f} GiB "
                f"(> half of {mem / 2**30:.1f} GiB available)")
    if cal is None or not cal.get("lowrank_s"):
        return None if n * k <= 4000 * 1000 else "no calibration (parts section did not time it)"
    k0, n0 = cal["lowrank_k"], cal["n"]
    scale = max(n * k * k / (n0 * k0 * k0), (k / k0) ** 3, k * batch * n / (k0 * cal["batch"] * n0))
    pred = cal["lowrank_s"] * scale
    if 2 * pred > cap_s:
        return f"predicted {pred:.0f} s per step (QR ∝ n·k², eigh ∝ k³), over the {cap_s:.0f} s cap"
    return None


def plot_scaling(scaling: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sgd": "#444444", "hessian_free": "#1f77b4", "gauss_newton": "#2ca02c", "newton_damped": "#d62728",
              LOW_RANK: "#9467bd", LOW_RANK_DAMPED: "#ff7f0e"}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    fig, ax = plt.subplots(figsize=(11, 6))
    for m in scaling["methods"]:
        for bi, batch in enumerate(scaling["batches"]):
            pts = sorted((r["param_count"], med(r["step"])) for r in scaling["rows"]
                         if r["method"] == m and r["batch"] == batch and med(r["step"]) is not None)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ks = sorted({r["step"].get("max_rank") for r in scaling["rows"] if r["method"] == m
                         and r["batch"] == batch and med(r["step"]) is not None and r["step"].get("max_rank")})
            rank = f" (max_rank {', '.join(map(str, ks))})" if ks else ""
            ax.plot(xs, ys, linestyle=styles[bi % 4], marker=markers[bi % 4], color=colors.get(m, None),
                    label=f"{LABELS[m]}{rank}, batch {batch}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (784-h-10 MLP, h = " + ", ".join(map(str, scaling["widths"])) + ")")
    ax.set_ylabel("time per optimizer step (s)")
    ax.set_title(f"Step time vs parameter count ({device}; float32 params, float64 solves)")
    ax.grid(True, which="both", alpha=0.3)
    skipped_newton = sorted({r["param_count"] for r in scaling["rows"]
                             if r["method"] == "newton_damped" and med(r["step"]) is None})
    if skipped_newton:
        ax.text(0.99, 0.01, "exact Newton not run for n ≥ " + f"{skipped_newton[0]:,}" + " (n² float64 memory / time)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#d62728")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- report


def device_name() -> str:
    dev = jax.devices()[0]
    if jax.default_backend() == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", dev.device_kind.lower()).strip("_") or jax.default_backend()


def fmt_t(t: Any) -> str:
    if not isinstance(t, dict):
        return "–"
    if "skipped" in t:
        return "skipped"
    v = t.get("median_s")
    if v is None:
        return "–"
    s = f"{v * 1e3:.3f} ms" if v < 1 else f"{v:.2f} s"
    return s + (" (est.)" if t.get("estimated_from_parts") else "") + (" (1 run)" if t.get("single_run") else "")


def fmt_x(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}×"


def write_markdown(res: dict, path: Path) -> None:
    L: list[str] = [f"# Benchmark on `{res['device']}` ({res['environment'].get('device_kind')})", ""]
    L.append(f"{'Quick smoke run' if res['quick'] else 'Full run'}, {res['environment']['started_at']}, "
             f"git {res['environment'].get('git_commit')}, jax {res['environment']['packages'].get('jax')}, "
             f"{os.cpu_count()} CPU threads; load average at start {res['load_average']['start']}, "
             f"at end {res['load_average']['end']}. Median of repeats; compilation and one warm-up "
             "call excluded. Total wall-clock " + f"{res['wall_s']['total']:.0f} s.")
    L.append("")
    p = res.get("parts")
    if p:
        size = "paper size" if p["hidden"] == [10] else "reduced size (--quick)"
        L += [f"## 1. Per-step parts at {size} (784-{p['hidden'][0]}-10, batch {p['batch']}, "
              f"{p['param_count']} parameters; float32 params, float64 curvature/solves)", "",
              "| part | median | compile |", "|---|---|---|"]
        for k, t in p["parts"].items():
            L.append(f"| {k} | {fmt_t(t)} | {t.get('compile_s', 0) or 0:.2f} s |" if "skipped" not in t
                     else f"| {k} | skipped ({t['skipped']}) | |")
        L += ["", "| CG solve | params | iterations (median) | solve | per iteration |", "|---|---|---|---|---|"]
        for m in ("hessian_free", "gauss_newton"):
            for lab in ("init", "trained"):
                c = p["cg"][m][lab]
                L.append(f"| {m} | {lab} | {c['iterations_median']:.0f} ({min(c['iterations'])}–{max(c['iterations'])}) "
                         f"| {c['solve_median_s'] * 1e3:.3f} ms | {c['time_per_iteration_s'] * 1e3:.3f} ms |")
        r = p["ratios"]
        L += ["", "| whole step | median | step / gradient |", "|---|---|---|"]
        for m, t in p["steps"].items():
            L.append(f"| {LABELS[m]} | {fmt_t(t)} | {fmt_x(r['step_over_gradient'].get(m), 1)} |")
        L += ["", f"HVP / gradient: {fmt_x(r['hvp_over_gradient'])} (vs float64 gradient "
              f"{fmt_x(r['hvp_over_gradient_f64'])}); GGN product / gradient: {fmt_x(r['ggn_over_gradient'])} "
              f"(float64 {fmt_x(r['ggn_over_gradient_f64'])}); CG iteration / product: "
              f"HF {fmt_x(r['cg_iteration_over_hvp'].get('hessian_free'))}, GN {fmt_x(r['cg_iteration_over_hvp'].get('gauss_newton'))}; "
              f"damped Newton step / (Hessian build + Cholesky): {fmt_x(r['newton_damped_step_over_hessian_plus_cholesky'])}; "
              f"jax.hessian / dense_hessian: {fmt_x(r['jax_hessian_over_dense_hessian'])}."]
        if "newton_over_newton_lowrank" in r:
            k = p["steps"][LOW_RANK].get("max_rank")
            L.append(f"Low-rank path (max_rank {k}) speed-up over the dense one: λ=0 "
                     f"{fmt_x(r.get('newton_over_newton_lowrank'), 1)}, λ=32 "
                     f"{fmt_x(r.get('newton_damped_over_newton_damped_lowrank'), 2)}.")
        L.append("")
    e = res.get("epoch")
    if e:
        L += [f"## 2. One epoch ({e['steps']} steps): real trainer (W&B offline + CSV) vs jitted lax.scan yardstick", "",
              "Yardstick: `lax.scan` over the epoch's batches gathered beforehand (pure step math); "
              "yardstick + gather: each step gathers its batch from the on-device dataset, as the trainer does.", "",
              "| method | trainer train_time_s | yardstick | trainer / yardstick (goal ≤ 1.2) | yardstick + gather "
              "| trainer / (yardstick + gather) | trainer's chunk fn, 1 call | same, in chunks | mean CG iterations |",
              "|---|---|---|---|---|---|---|---|---|"]
        for m, v in e["methods"].items():
            b = v.get("breakdown", {})
            one, chunks = med(b.get("trainer_chunk_fn_one_call")), med(b.get("trainer_chunk_fn_in_chunks"))
            L.append(f"| {m} | {v['trainer_median_s']:.3f} s | {med(v['yardstick']):.3f} s | {v['ratio']:.2f} | "
                     f"{med(v['yardstick_gather']):.3f} s | {v['ratio_vs_yardstick_gather']:.2f} | "
                     + (f"{one:.3f} s | {chunks:.3f} s |" if one and chunks else "– | – |")
                     + (f" {v['cg_iterations_mean']:.1f} |" if "cg_iterations_mean" in v else " – |"))
        L += ["", "Trainer and yardstick produce the same per-step losses (max abs difference "
              + ", ".join(f"{m} {v['same_losses_max_abs_diff']:.1e}" for m, v in e["methods"].items()
                          if v.get("same_losses_max_abs_diff") is not None) + ")."]
        L.append("")
    b = res.get("baseline")
    if b:
        L += ["## 3. Speed-up of our trainer over the straightforward implementation", "", b["description"], "",
              "| method | width | baseline / step | ours / step | speed-up |", "|---|---|---|---|---|"]
        for m, v in b["methods"].items():
            for var in ("jit", "eager"):
                if var in v:
                    if "note" in v:  # exact Newton: medians of per-step times
                        base_t = v[var]["median_step_s"]
                        ours_t = v["ours"].get("median_step_s", v["ours"]["per_step_s"])
                    else:
                        base_t, ours_t = v[var]["per_step_s"], v["ours"]["per_step_s"]
                    L.append(f"| {m} ({var}, {v[var]['steps']} step{'s' if v[var]['steps'] != 1 else ''}) | {v['hidden'][0]} | "
                             f"{base_t * 1e3:.3f} ms | {ours_t * 1e3:.3f} ms | {v[var]['speedup']:.1f}× |")
        for m, v in b["methods"].items():
            if "note" in v:
                L.append(f"\n{m}: {v['note']}.")
        L.append("")
    sc = res.get("scaling")
    if sc:
        L += ["## 4. Scaling: step time (width × batch)", "", f"![scaling]({res['files']['plot']})", "",
              "| hidden | batch | params | " + " | ".join(sc["methods"]) + " |",
              "|---|---|---|" + "---|" * len(sc["methods"])]
        for hidden in sc["widths"]:
            for batch in sc["batches"]:
                rs = {r["method"]: r for r in sc["rows"] if r["hidden"] == hidden and r["batch"] == batch}
                if not rs:
                    continue
                n = next(iter(rs.values()))["param_count"]
                L.append(f"| {hidden} | {batch} | {n} | " + " | ".join(fmt_t(rs[m]["step"]) if m in rs else "–"
                                                                  for m in sc["methods"]) + " |")
        if sc["notes"]:
            L += ["", "Skipped:"] + [f"- {nt}" for nt in sc["notes"]]
        L.append("")
    L += ["## Wall-clock per section", "", " · ".join(f"{k} {v:.0f} s" for k, v in res["wall_s"].items()), ""]
    cc = {k: v for k, v in res.get("cpu_contention", {}).items() if isinstance(v, dict) and "foreign_cpu_share" in v}
    if cc:
        L += ["CPU used by other processes during each section (share of all cores; > 0.1 disturbs the timings): "
              + " · ".join(f"{k} {v['foreign_cpu_share']:.2f}" for k, v in cc.items()), ""]
    path.write_text("\n".join(L))


def print_summary(res: dict) -> None:
    print("\n=== bench summary (" + res["device"] + ") ===")
    p = res.get("parts")
    if p:
        r = p["ratios"]
        print(f"paper size n={p['param_count']}: gradient {fmt_t(p['parts']['gradient'])}, HVP {fmt_t(p['parts']['hvp'])} "
              f"({fmt_x(r['hvp_over_gradient'])}), GGN {fmt_t(p['parts']['ggn_vp'])} ({fmt_x(r['ggn_over_gradient'])})")
        print(f"  dense Hessian {fmt_t(p['parts']['dense_hessian'])}, jax.hessian {fmt_t(p['parts']['jax_hessian'])}, "
              f"Cholesky {fmt_t(p['parts']['cholesky'])}, eigh {fmt_t(p['parts']['eigh'])}")
        for m, c in p["cg"].items():
            if isinstance(c, dict):
                print(f"  CG {m}: {c['init']['iterations_median']:.0f} it @init, {c['trained']['iterations_median']:.0f} it "
                      f"after SGD; {c['init']['time_per_iteration_s'] * 1e3:.3f} ms/it")
        print("  steps: " + ", ".join(f"{m} {fmt_t(t)} ({fmt_x(r['step_over_gradient'].get(m), 0)} grad)"
                                      for m, t in p["steps"].items()))
        print(f"  damped Newton step / (Hessian + Cholesky) = {fmt_x(r['newton_damped_step_over_hessian_plus_cholesky'])}")
    e = res.get("epoch")
    if e:
        print("epoch trainer/yardstick: " + ", ".join(f"{m} {v['ratio']:.2f}" for m, v in e["methods"].items())
              + "; vs yardstick with on-device gather: "
              + ", ".join(f"{m} {v['ratio_vs_yardstick_gather']:.2f}" for m, v in e["methods"].items()))
    b = res.get("baseline")
    if b:
        print("speed-up over straightforward baseline: " + ", ".join(
            f"{m} {v['speedup']:.1f}×" + (f" (eager cg {v['eager']['speedup']:.0f}×)" if "eager" in v else "")
            for m, v in b["methods"].items()))
    print("files: " + ", ".join(str(v) for v in res["files"].values()))
    print("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["wall_s"].items()))
    cc = {k: v for k, v in res.get("cpu_contention", {}).items() if isinstance(v, dict) and "foreign_cpu_share" in v}
    if cc:
        print("other processes' CPU share: " + ", ".join(f"{k} {v['foreign_cpu_share']:.2f}" for k, v in cc.items()))


def strip_private(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [strip_private(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = make_settings(args)
    MIN_TOTAL_S[0] = 0.1 if s.quick else 0.3
    try:
        CONFIG_MAX_RANK[0] = compose(["optimizer=newton"])["optimizer"].get("max_rank")
    except Exception:  # noqa: BLE001 - configs are optional for the benchmark
        CONFIG_MAX_RANK[0] = None
    if not args.mnist_dir:
        print("error: no MNIST directory: pass --mnist-dir or set MNIST_DIR", file=sys.stderr)
        return 2
    from second_order.suite.data import load_mnist

    t_start = _now()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device_name()
    res: dict[str, Any] = {"device": device, "quick": s.quick, "settings": dataclasses.asdict(s),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
                           "timing_protocol": __doc__.split("Timing protocol: ")[1].strip().replace("\n", " ")}
    res["environment"] = environment.record()
    res["environment"]["cpu_count"] = os.cpu_count()
    data = load_mnist(args.mnist_dir)
    wall: dict[str, float] = {}
    mon, cpu = CpuMonitor(), {}
    m0 = mon.snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="second_order_bench-"))
    cache: dict = {}
    try:
        t0, ms = _now(), mon.snapshot()
        res["parts"] = section_parts(data, s, args.low_rank_max_rank)
        wall["parts"] = _now() - t0
        cpu["parts"] = mon.since(ms)
        if args.epoch:
            t0, ms = _now(), mon.snapshot()
            res["epoch"] = section_epoch(data, s, args.mnist_dir, workdir, cache)
            wall["epoch"] = _now() - t0
            cpu["epoch"] = mon.since(ms)
        if args.baseline:
            t0, ms = _now(), mon.snapshot()
            res["baseline"] = section_baseline(data, s, args.mnist_dir, workdir, cache)
            wall["baseline"] = _now() - t0
            cpu["baseline"] = mon.since(ms)
        files = {"json": str(out_dir / f"{device}.json"), "markdown": str(out_dir / f"{device}.md")}
        if args.scaling:
            t0, ms = _now(), mon.snapshot()
            res["scaling"] = section_scaling(data, s, res["parts"], args.low_rank_max_rank)
            plot = out_dir / f"scaling_{device}.png"
            plot_scaling(res["scaling"], plot, device)
            files["plot"] = plot.name
            wall["scaling"] = _now() - t0
            cpu["scaling"] = mon.since(ms)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall["total"] = _now() - t_start
    res["wall_s"] = wall
    cpu["total"] = mon.since(m0)
    res["cpu_contention"] = {"note": "foreign_cpu_share: CPU time of other processes / (wall × cores) while "
                                     "the section ran; > ~0.1 means the timings are disturbed", **cpu}
    res["files"] = files
    res["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    res = strip_private(res)
    Path(files["json"]).write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, Path(files["markdown"]))
    print_summary(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
