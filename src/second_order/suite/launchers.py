"""Which Hydra launchers run a sweep's jobs at once on this machine (never for timed runs).

Timed runs that share a machine's cores slow each other down, so their optimizer seconds
are not comparable. joblib (``hydra/launcher=parallel``) and submitit's local executor
(``local_processes``: it starts every job of a sweep at once) do that; Hydra's basic
launcher runs one job after another, and a SLURM launcher gives each job an allocation of
its own. The study's final phase and ``scripts/reproduce.py`` refuse the first kind; the
reports check what really happened from the runs' records (:mod:`.report.overlaps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

#: The plugins' launcher configs that run a sweep's jobs at once on this machine.
JOBS_AT_ONCE = ("joblib", "submitit_local")
#: The repository's launcher presets (configs/hydra/launcher/), each extending a plugin's config.
LAUNCHER_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "hydra" / "launcher"


def chosen_launcher(overrides: Sequence[str]) -> str | None:
    """The launcher a command line picks (``hydra/launcher=<name>``, the last one wins), or None."""
    chosen = [o.split("=", 1)[1] for o in overrides if "=" in o and o.lstrip("+").split("=", 1)[0] == "hydra/launcher"]
    return chosen[-1] if chosen else None


def runs_jobs_at_once(launcher: str, configs: Path | None = None) -> bool:
    """Whether ``hydra/launcher=<launcher>`` is, or extends through its defaults, one of :data:`JOBS_AT_ONCE`.

    ``configs``: the launcher config folder (default :data:`LAUNCHER_CONFIGS`).
    """
    if launcher in JOBS_AT_ONCE:
        return True
    configs = configs or LAUNCHER_CONFIGS
    try:
        defaults = (yaml.safe_load((configs / f"{launcher}.yaml").read_text()) or {}).get("defaults") or []
    except (OSError, yaml.YAMLError, AttributeError):
        return False  # a plugin's own config (basic, submitit_slurm, ...): Hydra reports a bad name itself
    parents = [d for d in defaults if isinstance(d, str) and d not in ("_self_", launcher)]
    return any(runs_jobs_at_once(d, configs) for d in parents)


def jobs_at_once_message(launcher: str, what: str) -> str:
    """The refusal: ``hydra/launcher=<launcher>`` runs jobs at once, which distorts ``what``."""
    return (
        f"hydra/launcher={launcher} runs a sweep's jobs at once on this machine: {what} would share its cores "
        "and distort each other's seconds"
    )
