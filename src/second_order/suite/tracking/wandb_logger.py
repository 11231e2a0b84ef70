"""Optional Weights & Biases logging for the trainer.

The local run directory (see :mod:`second_order.suite.tracking.runs`) is always the source of
truth; W&B is a mirror.  :class:`WandbLogger` therefore never lets W&B break a
run: if ``wandb.init`` or any later call fails, it emits one
:class:`WandbWarning` and turns into a no-op.

Metric layout (one W&B history row per optimizer step, plus one per evaluation)::

    step rows:  step, epoch, time_s, train/loss, opt/<diagnostic>...
    eval rows:  step, epoch, time_s, eval/loss, eval/acc (+ val/loss, val/acc with a validation split)
    curvature rows (diagnostics=curvature): step, epoch, time_s, curvature/<measure>...

``step`` (our optimizer step) is the x-axis of every ``train/*``, ``opt/*``,
``eval/*``, ``curvature/*`` chart via ``define_metric(..., step_metric="step")``; W&B's own
``_step`` just counts ``log`` calls, so resumed runs that re-log steps after a
checkpoint never trip W&B's "step must increase" check.  ``time_s`` is logged
in every row and declared with ``define_metric("time_s")``, so it can be picked
as the x-axis of any line plot in the UI (loss vs. optimizer wall-clock time).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODES = ("offline", "online", "disabled")

# wandb.Settings used for every run.  Checked against wandb 0.31
# (wandb/sdk/wandb_settings.py); see the comments for why each is set.
BASE_SETTINGS: dict[str, Any] = {
    "silent": True,  # no banners / run summaries on stdout
    "console": "off",  # do not capture or redirect the trainer's stdout/stderr
    "x_disable_stats": True,  # no system-metrics sampler process (perturbs time_s, costs CPU)
    "x_disable_meta": True,  # no host/GPU/git metadata probe; environment.json has it
    "x_disable_machine_info": True,  # same: skip machine info collection
    "x_save_requirements": False,  # pip-freeze scan is ~60 ms of every init
    "save_code": False,  # no code snapshot
    "disable_code": True,
    "disable_git": True,  # no git diff/commit probe (~10 ms)
    "disable_job_creation": True,  # no W&B Launch job artifact
}


class WandbWarning(UserWarning):
    """W&B logging problem; training continues and local logs stay complete."""


class WandbLogger:
    """Mirror of the trainer's step/eval rows and summary to a W&B run.

    ``mode="disabled"`` never imports or initialises wandb.  Files of
    offline/online runs go to ``run_dir/wandb/`` (``offline-run-*`` or
    ``run-*``).  Pass ``resume_id`` (a previous :attr:`run_id`) to continue
    the same W&B run with ``resume="allow"``.
    """

    def __init__(
        self,
        *,
        mode: str,
        project: str,
        entity: str | None,
        run_dir: Path,
        name: str,
        group: str | None,
        tags: list[str],
        config: dict,
        job_type: str | None = None,
        resume_id: str | None = None,
        init_timeout: float = 30.0,
        finish_timeout: float = 120.0,
        flush_timeout: float = 10.0,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """``init_timeout``/``finish_timeout`` (s) bound how long W&B may block
        ``__init__``/``finish`` (online mode: server handshake, uploads);
        ``flush_timeout`` bounds the wait in :meth:`finish` for the local
        ``.wandb`` file to be complete; ``settings`` overrides entries of
        :data:`BASE_SETTINGS` (any ``wandb.Settings`` field)."""
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.run_dir = Path(run_dir)
        self._run: Any = None
        self._run_id: str | None = resume_id
        self._sync_file: Path | None = None
        self._flush_timeout = float(flush_timeout)
        self._warned = False
        if mode == "disabled":
            return
        try:
            self._run = self._init(
                project=project,
                entity=entity,
                name=name,
                group=group,
                tags=list(tags),
                config=dict(config),
                job_type=job_type,
                resume_id=resume_id,
                init_timeout=init_timeout,
                finish_timeout=finish_timeout,
                overrides=dict(settings or {}),
            )
            self._run_id = self._run.id
            self._sync_file = Path(self._run.settings.sync_file)
        except Exception as e:  # noqa: BLE001 - W&B must never kill training
            self._disable(e)

    # ------------------------------------------------------------------ setup
    def _init(
        self,
        *,
        project: str,
        entity: str | None,
        name: str,
        group: str | None,
        tags: list[str],
        config: dict,
        job_type: str | None,
        resume_id: str | None,
        init_timeout: float,
        finish_timeout: float,
        overrides: dict[str, Any],
    ) -> Any:
        import wandb

        if self.mode == "online" and wandb.run is None:
            # Without credentials wandb.init would prompt on a terminal (blocking
            # training) or raise; check non-interactively first.
            if not _have_credentials(wandb, bool({**BASE_SETTINGS, **overrides}.get("silent"))):
                raise RuntimeError(
                    "no W&B credentials (set WANDB_API_KEY or run `wandb login`; "
                    "or use mode=offline and `wandb sync` later)"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            **{
                **BASE_SETTINGS,
                "init_timeout": float(init_timeout),
                "finish_timeout": float(finish_timeout),
                **overrides,
            }
        )
        run = wandb.init(
            mode=self.mode,  # type: ignore[arg-type]  # checked against MODES
            project=project,
            entity=entity,
            dir=str(self.run_dir),
            name=name,
            group=group,
            tags=tags,
            config=config,
            job_type=job_type,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="create_new",  # never finish or reuse someone else's run
            settings=settings,
        )
        try:
            run.define_metric("step")
            run.define_metric("time_s")
            for pattern in ("epoch", "train/*", "opt/*", "eval/*", "val/*", "curvature/*"):
                run.define_metric(pattern, step_metric="step")
        except Exception:
            run.finish(exit_code=1)
            raise
        return run

    def _disable(self, err: BaseException | str) -> None:
        """Warn once, drop the run (closing it quietly if possible), go no-op."""
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass
        if self._warned:
            return
        self._warned = True
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        reason = " ".join(str(reason).split())  # one line
        warnings.warn(
            f"W&B logging disabled ({self.mode}): {reason}; local logs in {self.run_dir} are complete",
            WandbWarning,
            stacklevel=3,
        )

    # ---------------------------------------------------------------- logging
    @property
    def active(self) -> bool:
        """True while a W&B run is open and healthy."""
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        """W&B run id to store for resuming (the given ``resume_id`` if W&B failed to start)."""
        return self._run_id

    def log_steps(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Log a chunk of per-step rows (``step, epoch, time_s, train/loss, opt/*``)."""
        if self._run is None:
            return
        log = self._run.log
        try:
            for row in rows:
                log(_plain_row(row))
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def log_eval(self, row: Mapping[str, Any]) -> None:
        """Log one evaluation row (``step, epoch, time_s, eval/loss, eval/acc``)."""
        self.log_steps((row,))

    def set_summary(self, d: Mapping[str, Any]) -> None:
        """Update the run summary (final numbers, status, ...)."""
        if self._run is None:
            return
        try:
            self._run.summary.update(_plain_row(d))
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; idempotent.

        Returns once the run's ``.wandb`` transaction log is complete on disk
        (or after ``flush_timeout``), so it can be read back immediately.
        """
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(exit_code=int(exit_code))
        except Exception as e:  # noqa: BLE001
            self._disable(e)
            return
        sync_file = self._sync_file
        if sync_file is not None and sync_file.exists():
            from second_order.suite.tracking.wandb_io import wait_for_transaction_log

            if not wait_for_transaction_log(sync_file, self._flush_timeout):
                warnings.warn(
                    f"W&B: {sync_file} still incomplete {self._flush_timeout:g} s after finish; "
                    f"local logs in {self.run_dir} are complete",
                    WandbWarning,
                    stacklevel=2,
                )

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def _have_credentials(wandb: Any, silent: bool = True) -> bool:
    """Whether W&B credentials are configured, without prompting or verifying them.

    Public API only: ``wandb.login(prompt=False, verify=False)``.  Unless W&B is
    silent, login also asks the server for the user name to print it (5 s when
    the server hangs), so the global ``silent`` setting is applied first with
    ``wandb.setup``, which also starts the W&B service ``wandb.init`` needs anyway.
    """
    if silent:
        wandb.setup(settings=wandb.Settings(silent=True))
    return bool(wandb.login(prompt=False, verify=False))


def _plain(v: Any) -> Any:
    """numpy / JAX scalars -> Python scalars (exact); other values unchanged."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    item = getattr(v, "item", None)
    if callable(item) and getattr(v, "ndim", 0) == 0:
        try:
            return item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in row.items()}
