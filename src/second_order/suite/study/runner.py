"""Run a study: tune every method on every workload, then the timed final runs.

Phases (each resumable: finished work is found on disk and skipped):

1. **tune** — per workload and method, one Hydra multirun with the Optuna sweeper
   (:func:`.plan.sweeper_overrides`): ``tuning.trials`` trials of ``tuning.epochs``
   epochs, minimising the final validation loss (``scripts/train.py`` returns it; the
   test set is never looked at).  The sweeper writes ``optimization_results.yaml``
   (the best parameters) into ``<root>/tune/<workload>/<method>/``.  Trials may run in
   parallel (``tuning.launcher: joblib``).
2. **final** — per workload and method, the best parameters with every seed of
   ``final.seeds``, ``final.epochs`` epochs, validation evaluations every
   ``final.eval_every_steps`` steps, into ``<root>/final/<workload>/<method>/seed<k>``;
   one job at a time (Hydra's basic launcher), since parallel jobs on one machine distort
   the time axis; a SLURM launcher (on the command line or in the machine's local config)
   runs each in an allocation of its own (:func:`check_final_launcher` refuses launchers
   that run jobs at once here). The report checks it from the runs' records
   (:mod:`second_order.suite.report.overlaps`).

Finished work is reused only if it was made with the same settings: each tuning and
each method's final directory keeps the overrides it was launched with
(``study_plan.yaml``: every override but the sweep directory and the final seed list,
with the extra overrides given on ``scripts/study.py``'s command line; of those, the ones
that only say how jobs run and log, :data:`NOT_COMPARED`, are left out).  A
directory whose plan differs from the current study config is refused
(:class:`.plan.StudyError`, naming the directory and the differences) instead of being
silently reported as the result of the new settings.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from second_order.suite.launchers import LauncherError, jobs_at_once
from second_order.suite.local_config import override_key
from second_order.suite.study.plan import (
    REPO,
    TUNING_SEED,
    Study,
    StudyError,
    Workload,
    common_overrides,
    launcher_overrides,
    search_space,
)
from second_order.suite.study.plan import sweeper_overrides as optuna_overrides
from second_order.suite.tracking import runs

TUNING_RESULTS = "optimization_results.yaml"  # written by hydra-optuna-sweeper into the sweep directory
FAILED_FILE = "failed.yaml"  # {workload: {method: why}}: the pairs whose tuning or final runs failed
PLAN_FILE = "study_plan.yaml"  # {overrides: [...]}: what a tuning or a method's final runs were launched with
Runner = Callable[[Sequence[str]], None]
#: Keys of extra overrides that say how a job runs and logs, not what it computes: not in study_plan.yaml.
NOT_COMPARED = (
    "logger.",
    "trainer.progress",
    "trainer.devices",
    "trainer.chunk_steps",
    "trainer.checkpoint_every_s",
    "hydra.launcher",
    "hydra/launcher",
)


def check_final_launcher(extra: Sequence[str]) -> None:
    """Refuse a launcher that would run the timed final runs at once on one machine.

    The final phase uses the launcher a sweep with ``extra`` would (Hydra's basic one, one
    job after another, unless the command line or ``configs/local/default.yaml`` picks
    another): SLURM is fine (each job its own allocation), joblib or submitit's local
    executor are not (the jobs would share the machine's cores). See :mod:`..launchers`.
    """
    try:
        at_once = jobs_at_once(extra)
    except LauncherError as err:
        raise StudyError(f"final runs: {err}") from err
    if at_once:
        raise StudyError(
            f"{at_once}: the timed final runs would share its cores and distort each other's seconds. Tune in "
            "parallel with `--phase tune hydra/launcher=parallel` (or tuning.launcher in the study config), then "
            "run `--phase final,report` with hydra/launcher=basic (one job after another) or "
            "hydra/launcher=slurm_gpu (each job its own allocation)"
        )


def compared(extra: Sequence[str]) -> list[str]:
    """The extra overrides that are part of a directory's plan (all but :data:`NOT_COMPARED` keys)."""
    return [o for o in extra if not override_key(o).startswith(NOT_COMPARED)]


def train_multirun(args: Sequence[str]) -> None:
    """``python scripts/train.py -m <args>`` in a fresh process (raises if it fails; a sweep with failed
    jobs does not: failed trials are Optuna's to skip, failed seeds are redone and reported)."""
    from second_order.suite.sweep import run_multirun

    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", *args]
    print("+", " ".join(cmd[1:]), flush=True)
    run_multirun(cmd, cwd=REPO)


def tune_dir(root: Path, workload: Workload, method: str) -> Path:
    return root / "tune" / workload.name / method


def final_dir(root: Path, workload: Workload) -> Path:
    return root / "final" / workload.name


def tuning_space(study: Study, method: str) -> dict[str, tuple[float, float]]:
    """The keys the study tunes for ``method`` and their ranges (empty: nothing to tune)."""
    return search_space(method, study.tuning.get("keys", ()), float(study.tuning.get("spread", 10.0)))


def tune(
    study: Study, workload: Workload, method: str, root: Path, run: Runner = train_multirun, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Best parameters of ``method`` on ``workload`` (``{}``: nothing to tune), tuning first if needed."""
    space = tuning_space(study, method)
    if not space:
        return {}
    where = tune_dir(root, workload, method)
    args = [
        f"optimizer={method}",
        *common_overrides(study, workload, study.tuning),
        f"seed={int(study.tuning.get('seed', TUNING_SEED))}",  # never a final seed (see TUNING_SEED)
        f"experiment_name=study_{study.name}_tune",
        "trainer.resume=true",  # an interrupted tuning redoes the same trials (seeded sampler)
        *optuna_overrides(space, study.tuning),
        "hydra.sweep.subdir=trial${hydra.job.num}",
    ]
    check_plan(where, [*args, *compared(extra)], "tuned")
    if not (where / TUNING_RESULTS).exists():
        run([*args, *extra, f"hydra.sweep.dir={where}"])
    return best_parameters(where)


def check_plan(where: Path, overrides: Sequence[str], what: str) -> None:
    """Refuse a directory made with other ``overrides``; record them in a new one (see the module doc)."""
    path = where / PLAN_FILE
    if not path.exists():
        where.mkdir(parents=True, exist_ok=True)
        runs.write_text(path, yaml.safe_dump({"overrides": list(overrides)}, sort_keys=False))
        return
    # How jobs were launched and logged (NOT_COMPARED keys) may differ (older plans named the basic launcher).
    before = compared((yaml.safe_load(path.read_text()) or {}).get("overrides") or [])
    overrides = compared(overrides)
    if before == overrides:
        return
    then = [o for o in before if o not in overrides] or ["(the same overrides in another order)"]
    now = [o for o in overrides if o not in before]
    raise StudyError(
        f"{where} was {what} with other settings (then: {', '.join(then)}; now: {', '.join(now) or '-'}); "
        f"delete {where} to redo it with the current study config, or restore the settings it was made with"
    )


def best_parameters(where: Path) -> dict[str, Any]:
    """``best_params`` of a finished Optuna sweep (its ``optimization_results.yaml``)."""
    results = yaml.safe_load((where / TUNING_RESULTS).read_text()) or {}
    return dict(results.get("best_params") or {})


def final(
    study: Study,
    workload: Workload,
    method: str,
    params: dict[str, Any],
    root: Path,
    run: Runner = train_multirun,
    extra: Sequence[str] = (),
) -> None:
    """The timed runs: every seed not yet ended, one at a time, with the tuned parameters.

    Seeds that ended for good are not launched again (a diverged seed would otherwise be
    retrained from its last checkpoint and timed anew).
    """
    where = final_dir(root, workload) / method
    args = [
        f"optimizer={method}",
        *common_overrides(study, workload, study.final),
        *(f"{key}={value}" for key, value in sorted(params.items())),
        f"experiment_name=study_{study.name}",
        f"trainer.eval_every_steps={int(study.final.get('eval_every_steps', 100))}",
        "trainer.resume=true",
        *launcher_overrides(study.final),
        "hydra.sweep.subdir=seed${seed}",
    ]
    check_plan(where, [*args, *compared(extra)], "run")
    pending = [int(s) for s in study.final["seeds"] if not finished(where / f"seed{int(s)}")]
    if pending:
        run([*args, *extra, f"seed={','.join(map(str, pending))}", f"hydra.sweep.dir={where}"])


def finished(run_dir: Path) -> bool:
    """Whether a run ended for good (completed, its budget, or diverged); interrupted or failed runs are redone."""
    return (runs.read_summary(run_dir) or {}).get("status") in ("completed", "budget", "diverged")


def run_study(
    study: Study,
    root: Path,
    phases: Sequence[str] = ("tune", "final"),
    run: Runner = train_multirun,
    extra: Sequence[str] = (),
) -> dict:
    """Every phase for every workload and method; returns ``{workload: {method: best parameters}}``.

    ``extra``: Hydra overrides for every job (``scripts/study.py``'s positional arguments), part
    of each directory's plan but for the :data:`NOT_COMPARED` keys.

    A (workload, method) whose multirun fails (e.g. every trial refused: exact Newton on a
    model too large for it) is left out, named in ``<root>/failed.yaml`` and on stderr, and
    the study goes on; one stopped by a signal stops the study (each phase resumes). A
    launcher in ``extra`` that runs jobs at once on this machine is refused for the final
    phase (:func:`check_final_launcher`). With ``final`` but not ``tune`` in ``phases``, a
    method whose tuning has not finished is left out the same way (not timed with defaults).
    """
    if "final" in phases:  # before any tuning: a refusal after it would waste it
        check_final_launcher([*launcher_overrides(study.final), *extra])
    best: dict[str, dict[str, dict[str, Any]]] = {}
    failed: dict[str, dict[str, str]] = {}
    for workload in study.workloads:
        best[workload.name] = {}
        for method in study.methods:
            try:
                if "tune" in phases:
                    params = tune(study, workload, method, root, run, extra)
                else:  # the parameters an earlier tuning found
                    where = tune_dir(root, workload, method)
                    tuned = (where / TUNING_RESULTS).exists()
                    if "final" in phases and not tuned and tuning_space(study, method):
                        # timed with its defaults, it would be reported as tuned (and refused once tuned)
                        why = f"not tuned ({where} has no {TUNING_RESULTS}: run --phase tune first)"
                        failed.setdefault(workload.name, {})[method] = why
                        print(f"study: {method} on {workload.name} {why}; left out", file=sys.stderr, flush=True)
                        continue
                    params = best_parameters(where) if tuned else {}
                best[workload.name][method] = params
                if "final" in phases:
                    final(study, workload, method, params, root, run, extra)
            except subprocess.CalledProcessError as err:
                if err.returncode < 0 or err.returncode >= 128:
                    raise  # a signal (Ctrl-C, a pre-emption): stop the study, resumable as it is
                # e.g. every trial refused (exact Newton on a model too large for it): the others go on
                failed.setdefault(workload.name, {})[method] = f"exit status {err.returncode}"
                print(f"study: {method} on {workload.name} failed (exit status {err.returncode}); "
                      "left out, the study goes on", file=sys.stderr, flush=True)  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    runs.write_text(root / "best_parameters.yaml", yaml.safe_dump(best, sort_keys=True))
    if failed:
        runs.write_text(root / FAILED_FILE, yaml.safe_dump(failed, sort_keys=True))
    else:  # what an earlier invocation left out has run now: the report must not name it
        (root / FAILED_FILE).unlink(missing_ok=True)
    return best
