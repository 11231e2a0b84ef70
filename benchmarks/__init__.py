"""Timing benchmark of the second-order optimizers → results/bench/<device>.{json,md,png}.

    python -m benchmarks                      # full run (~10-20 min on 2 quiet CPU cores)
    python -m benchmarks --quick --out /tmp/b # smoke run (~1 min): small widths, few repeats, no eigh
    python -m benchmarks --skip-slow          # skip every measurement expected to take > ~60 s
    make bench ARGS="--no-scaling --repeats 3"

Every method and its hyperparameters come from ``configs/optimizer/*.yaml`` (composed with
Hydra, as the suite does); a config with a ``max_rank`` key is timed twice, on its dense
path (``max_rank=None``, key ``<name>``) and on its low-rank path (key ``<name>_lowrank``).

Sections, each under its own key of the JSON (one module each):

1. ``parts``     (parts.py) paper size (784-10-10 MLP, batch 64, float32 parameters, float64
                 solves): gradient, Hessian-vector product, GGN-vector product, CG solves of
                 the CG methods (iterations and time per iteration, at the initial parameters
                 and after one epoch of SGD), dense Hessian (``curvature.dense_hessian`` and
                 ``jax.hessian``), Cholesky of H + 32 I, eigendecomposition of H (once), and
                 one whole optimizer step per method and path: its first step from the initial
                 state, and (mean_step.py) its mean step over 100 consecutive steps in one
                 ``lax.scan`` (periodic work such as K-FAC's inversions at its rate), whose
                 ratio to the mean of 100 gradients is its cost in gradient-equivalents.
2. ``epoch``     (epoch.py) one epoch (937 steps) of the real trainer (``experiment.run``,
                 W&B offline and CSV logging on), its ``train_time_s`` against a minimal
                 jitted ``lax.scan`` loop of the same optax transformation (the yardstick;
                 also one that gathers each batch from the on-device dataset, as the trainer
                 does), and the trainer's own chunk function timed in one call and in chunks.
3. ``baseline``  (baseline.py) the straightforward implementation: a Python loop per step
                 with a host sync (``float(loss)``) and a ``wandb.log`` call every step;
                 ``jax.hessian`` + ``jnp.linalg.pinv`` for Newton (several steps at a reduced
                 width, and one step at the paper's size), ``jax.scipy.sparse.linalg.cg`` for
                 HF/GN (whole step jitted, and a variant calling ``cg`` eagerly from Python).
                 Speed-up of our trainer over it.
4. ``scaling``   (scaling.py) step time against hidden width × batch size, log-log plot.
5. ``environment``, ``cpu_contention`` (cli.py, timing.py) versions, device, git commit, load
                 average, and the CPU time other processes used while each section ran.

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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see :mod:`benchmarks.cli`); return the exit status."""
    from benchmarks.cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
