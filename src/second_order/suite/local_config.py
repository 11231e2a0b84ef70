"""The machine-local config (``configs/local/default.yaml``) and the switch that leaves it out.

Every run loads ``configs/local/default.yaml`` when it exists (cluster account, a SLURM
launcher, W&B entity: see ``configs/local/example.yaml``); ``~local`` on the command line
leaves it out for one command. ``SECOND_ORDER_NO_LOCAL_CONFIG=1`` does that for every
command of a shell (``scripts/train.py``, and the launcher check of the study and
reproduce): a quick run on a cluster's login node, or the test suite (its conftest sets it,
so ``make test`` never submits SLURM jobs or reads another machine's paths).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

NO_LOCAL_CONFIG_ENV = "SECOND_ORDER_NO_LOCAL_CONFIG"


def override_key(override: str) -> str:
    """The key or group a Hydra override sets, adds or deletes (``+a.b=1``, ``~local``: ``a.b``, ``local``)."""
    return override.lstrip("+~").split("=", 1)[0]


def switched_off() -> bool:
    """Whether ``$SECOND_ORDER_NO_LOCAL_CONFIG`` asks to leave the local config out (set, not "" or "0")."""
    return os.environ.get(NO_LOCAL_CONFIG_ENV, "") not in ("", "0")


def launcher_key_hint(message: str, configs: Path) -> str:
    """A hint to append to Hydra's error for a launcher key the chosen launcher lacks, else "".

    ``Key 'account' not in 'JobLibLauncherConf'``: the machine-local config (under
    ``configs``) set a key of its own launcher (SLURM's account) and the command line chose
    another launcher; ``~local`` leaves the local config out.
    """
    found = re.search(r"Key '(\w+)' not in '\w*LauncherConf'", message)
    if found is None or switched_off() or not (configs / "local" / "default.yaml").exists():
        return ""
    return (
        f" (configs/local/default.yaml may set hydra.launcher.{found.group(1)} for its own launcher: "
        "add ~local to leave it out for this command)"
    )


def without_local_config(overrides: Sequence[str]) -> list[str]:
    """``["~local"]`` when :func:`switched_off` and ``overrides`` do not choose ``local`` themselves, else ``[]``."""
    chooses = any(override_key(o) == "local" for o in overrides)
    return ["~local"] if switched_off() and not chooses else []


#: Hydra's command-line flags that take a value (``--info`` takes one of ``INFO_CHOICES`` or none).
VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
     "--experimental-rerun"}
)  # fmt: skip
INFO_CHOICES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})


def with_local_config_switch(argv: Sequence[str]) -> list[str]:
    """``argv`` (a Hydra app's arguments) with :func:`without_local_config`'s ``~local`` among its overrides.

    Put just before the first override, so that the overrides stay one run of arguments:
    Hydra's argparse takes only the first run of positional arguments (``a=1 --cfg job
    ~local`` would be refused as an unrecognized argument).
    """
    argv = list(argv)
    positions, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in VALUE_FLAGS:
            i += 2
            continue
        if arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in INFO_CHOICES:
            i += 2
            continue
        if not arg.startswith("-"):
            positions.append(i)
        i += 1
    overrides = [argv[k] for k in positions]
    at = positions[0] if positions else 0
    return argv[:at] + without_local_config(overrides) + argv[at:]
