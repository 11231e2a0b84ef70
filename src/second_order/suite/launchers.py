"""Which Hydra launcher a sweep would use, and whether it runs jobs at once on this machine.

Timed runs that share a machine's cores slow each other down, so their optimizer seconds
are not comparable. joblib (``hydra/launcher=parallel``) and submitit's local executor
(``local_processes``: it starts every job of a sweep at once) do that; Hydra's basic
launcher runs one job after another, and a SLURM launcher gives each job an allocation of
its own. The launcher is found by composing the config as ``scripts/train.py`` would (the
command line's launcher keys and the machine's ``configs/local/default.yaml``), so a
user's own preset is judged by the plugin it extends. The study's final phase and
``scripts/reproduce.py`` refuse the first kind; the reports check what really happened
from the runs' records (:mod:`.report.overlaps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from second_order.suite.local_config import override_key, without_local_config

#: Launcher classes (the end of ``hydra.launcher._target_``) that run a sweep's jobs at once here.
AT_ONCE = {"JoblibLauncher": "joblib", "LocalLauncher": "submitit's local executor"}
CONFIGS = Path(__file__).resolve().parents[3] / "configs"
LAUNCHER_KEYS = ("hydra/launcher", "hydra.launcher")  # with ``local``: what can change the launcher


class LauncherError(ValueError):
    """The launcher keys do not compose (e.g. a local config's SLURM keys on another launcher)."""


def launcher_target(overrides: Sequence[str], configs: Path | None = None) -> str:
    """``hydra.launcher._target_`` of a sweep with these overrides (only their launcher keys are used).

    ``configs``: the config folder (default :data:`CONFIGS`, the repository's).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from second_order.suite.config import register

    register()
    # the overrides that choose or configure the launcher (the others cannot change it)
    picked = [o for o in overrides if override_key(o) == "local" or override_key(o).startswith(LAUNCHER_KEYS)]
    picked += without_local_config(picked)  # as scripts/train.py would
    try:
        with initialize_config_dir(config_dir=str(configs or CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=picked, return_hydra_config=True)
    except HydraException as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(("full_key:", "object_type="))]
        why = " ".join(lines).split(" Config search path:")[0] or type(err).__name__  # where, what, the choices
        hint = " (`~local` leaves out configs/local/default.yaml)" if "local/" in why else ""
        raise LauncherError(f"the launcher does not compose: {why}{hint}") from err
    return str(cfg.hydra.launcher._target_)


def jobs_at_once(overrides: Sequence[str], configs: Path | None = None) -> str | None:
    """A message naming the launcher when it would run jobs at once on this machine, else None."""
    target = launcher_target(overrides, configs)
    kind = AT_ONCE.get(target.rsplit(".", 1)[-1])
    if kind is None:
        return None
    chosen = [o.split("=", 1)[1] for o in overrides if override_key(o) == "hydra/launcher" and "=" in o]
    where = f"hydra/launcher={chosen[-1]}" if chosen else "the launcher configs/local/default.yaml picks"
    return f"{where} ({kind}) runs a sweep's jobs at once on this machine"
