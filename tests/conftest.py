"""Shared test setup: float64 available (as in the paper), small problems, real MNIST and Fashion-MNIST paths."""

from __future__ import annotations

import os
from pathlib import Path

# On a GPU, every test process (xdist workers, the runs they launch) takes memory as it needs it,
# instead of 75 % of the GPU each at start-up (set before JAX starts a backend; inherited by subprocesses).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Never this machine's configs/local/default.yaml (a SLURM launcher, a cluster's paths): every run the
# tests launch, and every config they compose, leaves it out (second_order.suite.local_config).
os.environ["SECOND_ORDER_NO_LOCAL_CONFIG"] = "1"
# Nor the user's WANDB_MODE (the default of logger.wandb.mode): runs log offline unless a test says otherwise.
os.environ.pop("WANDB_MODE", None)

#: XLA_FLAGS as the user set them (what tests marked ``xla_default`` launch their runs with), kept in
#: the environment for the xdist workers, which inherit the XLA_FLAGS set below.
USER_XLA_FLAGS = os.environ.setdefault("SECOND_ORDER_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
#: The tests compile hundreds of small programs and time none of them: at XLA's backend optimization
#: level 0 (no LLVM -O2) the suite takes about a quarter less time on 2 cores (17.7 -> 13.1 min). Every
#: test process and every process it launches compiles at level 0, unless XLA_FLAGS already sets a level or
#: SECOND_ORDER_TEST_XLA_OPT=default. Levels differ only in floating-point rounding (operations fused or
#: reordered), so results are compared within one level: bitwise properties (a resume equals an
#: uninterrupted run) hold at each, and the tests marked ``xla_default`` (tests/test_soak.py) check them
#: at the default level, as users run.
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"
_flags = os.environ.get("XLA_FLAGS", "")  # a launched process's own (e.g. its device count) are kept
if "xla_backend_optimization_level" not in _flags and os.environ.get("SECOND_ORDER_TEST_XLA_OPT") != "default":
    os.environ["XLA_FLAGS"] = f"{_flags} {TEST_XLA_FLAG}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]


#: ``compiler_options`` that compile one program at XLA's default level inside a level-0 test process,
#: for the tests whose run time, not compile time, dominates (the CNN's elementwise float64 work runs
#: up to 3x slower unoptimized): ``jitted.lower(*args).compile(compiler_options=XLA_DEFAULT_LEVEL)``.
XLA_DEFAULT_LEVEL = {"xla_backend_optimization_level": 2}


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a launched process: this session's (its optimization level) plus ``flags``."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


@pytest.fixture(autouse=True)
def _xla_default_for_marked_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes launched by an ``xla_default`` test compile as users' runs do (the user's XLA_FLAGS)."""
    if request.node.get_closest_marker("xla_default") is not None:
        if USER_XLA_FLAGS:
            monkeypatch.setenv("XLA_FLAGS", USER_XLA_FLAGS)
        else:
            monkeypatch.delenv("XLA_FLAGS", raising=False)


def mnist_dir() -> Path | None:
    """MNIST_DIR when set (and only it), else ../shared/data/mnist beside the checkout, else None."""
    env = os.environ.get("MNIST_DIR")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "data" / "mnist"]
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists():
            return c
    return None


#: Set (CI sets it) when real data must be there: then its absence fails the tests instead of skipping them.
REQUIRE_DATA = os.environ.get("SECOND_ORDER_REQUIRE_DATA", "") not in ("", "0")


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    d = mnist_dir()
    if d is None:
        message = "real MNIST not found: set MNIST_DIR to a directory with the four IDX files"
        if REQUIRE_DATA:
            pytest.fail(message + " (SECOND_ORDER_REQUIRE_DATA is set)")
        pytest.skip(message)
    return d


def fashion_mnist_dir() -> Path | None:
    """FASHION_MNIST_DIR when set (and only it), else Debian's /usr/share/datasets/fashion-mnist, else None."""
    env = os.environ.get("FASHION_MNIST_DIR")
    candidates = [Path(env)] if env else [Path("/usr/share/datasets/fashion-mnist")]
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists():
            return c
    return None


@pytest.fixture(scope="session")
def real_fashion_mnist_dir() -> Path:
    d = fashion_mnist_dir()
    if d is None:
        message = (
            "real Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or set "
            "FASHION_MNIST_DIR to a directory with the four IDX files"
        )
        if REQUIRE_DATA:
            pytest.fail(message + " (SECOND_ORDER_REQUIRE_DATA is set)")
        pytest.skip(message)
    return d


def compose_config(overrides: list[str] | None = None) -> dict:
    """The resolved config that ``scripts/train.py`` would run with these overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from second_order.suite.config import register

    register()

    from second_order.suite.local_config import without_local_config

    overrides = list(overrides or [])
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides + without_local_config(overrides))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


#: A URL that refuses connections at once (the discard port): W&B never reaches a server.
CLOSED_URL = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def wandb_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Isolate W&B from the user's home and the network for the module that asks for it."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME"):
            mp.delenv(var, raising=False)
        env = {
            "WANDB_SILENT": "true",
            "WANDB_BASE_URL": CLOSED_URL,
            "WANDB_DIR": str(home / "dir"),
            "WANDB_CONFIG_DIR": str(home / "config"),
            "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"),
            "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
            "XDG_CACHE_HOME": str(home / "xdg_cache"),  # wandb-core debug logs
            "XDG_CONFIG_HOME": str(home / "xdg_config"),
            "NETRC": str(home / "netrc"),  # absent: no stored credentials
        }
        for k, v in env.items():
            mp.setenv(k, v)
        wandb.teardown()  # a W&B singleton set up earlier would keep stale settings
        yield home
        wandb.teardown()
