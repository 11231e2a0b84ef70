"""Config composition for every optimizer and experiment, and one-line errors for bad values."""

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, compose_config

from second_order.suite.cli import missing_option, one_line
from second_order.suite.config import ConfigError, TrainerConfig, validate
from second_order.suite.experiment import prepare

OPTIMIZERS = sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_config_validates_and_builds(name):
    cfg = compose_config([f"optimizer={name}", "data.dir=/nonexistent"])
    rc, tx = prepare(cfg)
    assert rc.optimizer.name == name, "an optimizer's name must be its file name"
    written = yaml.safe_load((REPO / "configs" / "optimizer" / f"{name}.yaml").read_text())
    written = written.get("optimizer", written)  # files with '@package _global_' nest it
    assert rc.optimizer.kwargs == {k: v for k, v in cfg["optimizer"].items() if k not in ("name", "_target_")}
    assert set(rc.optimizer.kwargs) <= set(written), "no optimizer keyword may come from elsewhere"
    assert callable(tx.init) and callable(tx.update)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_and_sweep_existing_optimizers(name):
    from hydra import compose, initialize_config_dir

    rc = validate(compose_config([f"experiment={name}", "data.dir=/nonexistent"]))
    assert rc.experiment_name == name
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    swept = str(cfg.hydra.sweeper.params.optimizer).split(",")
    assert set(swept) <= set(OPTIMIZERS)


def test_trainer_defaults_come_from_the_schema():
    composed = compose_config(["data.dir=/x"])["trainer"]
    assert composed == dataclasses.asdict(TrainerConfig())


def test_stable_keys_exist():
    cfg = compose_config(["data.dir=/x"])
    for dotted in [
        "optimizer.learning_rate",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.max_steps",
        "data.dir",
        "seed",
        "logger.wandb.mode",
    ]:
        node = cfg
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]


def test_mnist_dir_env_is_the_default(monkeypatch):
    monkeypatch.setenv("MNIST_DIR", "/some/where")
    assert compose_config([])["data"]["dir"] == "/some/where"


def test_wandb_mode_env_is_the_default_and_the_key_wins(monkeypatch):
    """W&B's own WANDB_MODE (set cluster-wide, or =disabled for one command) is honoured; the key overrides it."""
    assert compose_config([])["logger"]["wandb"]["mode"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_config([])["logger"]["wandb"]["mode"] == "disabled"
    assert compose_config(["logger.wandb.mode=offline"])["logger"]["wandb"]["mode"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's old alias: refused, naming the variable
    with pytest.raises(ConfigError, match=r"logger.wandb.mode = 'dryrun' is invalid: .*WANDB_MODE"):
        prepare(compose_config([]))


def test_local_example_leaves_each_dataset_its_own_directory(monkeypatch):
    """configs/local/example.yaml sets no data.dir: each dataset keeps its own variable (README: Scale out)."""
    example = yaml.safe_load((REPO / "configs" / "local" / "example.yaml").read_text())
    assert "dir" not in (example.get("data") or {}), "one data.dir would be read for every dataset"
    dirs = {"mnist": "/data/mnist", "fashion_mnist": "/data/fashion", "cifar10": "/data/cifar"}
    for name, path in dirs.items():
        monkeypatch.setenv(f"{name.upper()}_DIR", path)
    for name, path in dirs.items():
        cfg = compose_config(["local=example", f"data={name}"])
        assert (cfg["data"]["name"], cfg["data"]["dir"]) == (name, path)
    assert compose_config(["local=example", "data=fashion_mnist", "data.dir=/given"])["data"]["dir"] == "/given"


def config_error(overrides: list[str]) -> str:
    """The one-line message of a bad config, whether composition or validation caught it."""
    try:
        prepare(compose_config(overrides + ["data.dir=/x"]))
    except Exception as err:  # noqa: BLE001 - what the CLI would print
        message = one_line(err)
        assert message is not None, f"{type(err).__name__} is not reported as a user error: {err}"
        return message
    raise AssertionError(f"{overrides} was accepted")


BAD = [
    (["optimizer.learning_rate=-0.1"], "learning_rate"),
    (["optimizer=hessian_free", "optimizer.damping=-1"], "damping"),
    (["optimizer=gauss_newton", "optimizer.tol=1.5"], "tol"),
    (["optimizer=gauss_newton", "optimizer.tol=0"], "tol"),
    (["optimizer=hessian_free", "optimizer.maxiter=0"], "maxiter"),
    (["optimizer=newton", "optimizer.max_rank=true"], "optimizer.max_rank"),
    (["optimizer=newton", "optimizer.max_rank=640.7"], "optimizer.max_rank"),
    (["optimizer=newton", "+optimizer.seed=abc"], "optimizer.seed"),
    (["optimizer=hessian_free", "+optimizer.solve_dtype=int32"], "optimizer.solve_dtype"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.batch_size=-3"], "trainer.batch_size"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["trainer.epochs=2.5"], "trainer.epochs"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.eval_every=0"], "trainer.eval_every"),
    (["model.hidden=[0]"], "model.hidden"),
    (["model.hidden=[]"], "model.hidden"),
    (["seed=-1"], "seed"),
    (["seed=4294967296"], "seed"),
    (["experiment_name=a/b"], "experiment_name"),
    (["logger.wandb.mode=sometimes"], "logger.wandb.mode"),
    (["+trainer.epochz=3"], "epochz"),
    (["trainer.epochz=3"], "epochz"),
    (["+optimizer.dampin=3"], "optimizer.dampin"),
    (["+banana=1"], "banana"),
    (["optimizer=bogus"], "bogus"),
    # beyond the paper: trust regions, Krylov sizes, LM, the online parabola
    (["optimizer=trust_region_cg", "optimizer.initial_radius=-1"], "optimizer.initial_radius"),
    (["optimizer=trust_region_cg", "optimizer.eta=0.5"], "optimizer.eta"),
    (["optimizer=trust_region_cg", "optimizer.eta=-0.1"], "optimizer.eta"),
    (["optimizer=trust_region_cg", "optimizer.solver=lanczos"], "optimizer.solver"),
    (["optimizer=trust_region_cg", "optimizer.curvature=fisher"], "optimizer.curvature"),
    (["optimizer=newton_lanczos", "optimizer.krylov_dim=0"], "optimizer.krylov_dim"),
    (["optimizer=saddle_free_newton", "optimizer.krylov_dim=0"], "optimizer.krylov_dim"),
    (["optimizer=saddle_free_newton", "optimizer.damping=-1"], "optimizer.damping"),
    (["optimizer=hessian_free_lm", "optimizer.damping_adaptation=marquardt"], "optimizer.damping_adaptation"),
    (["optimizer=gauss_newton_lm", "optimizer.lm_model=exact"], "optimizer.lm_model"),
    (["optimizer=online_parabola", "optimizer.beta=1.5"], "optimizer.beta"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_rejected_in_one_line_naming_the_key(overrides, key):
    message = config_error(overrides)
    assert key in message and "\n" not in message, message


def test_range_error_says_what_is_allowed():
    assert config_error(["trainer.batch_size=0"]) == "trainer.batch_size = 0 is invalid: must be an integer >= 1"
    assert "true or false" in config_error(["trainer.resume=maybe"])
    assert config_error(["seed=-1"]) == "seed = -1 is invalid: must be an integer >= 0 and <= 2147483647"  # in full


def test_a_misspelt_key_gets_the_closest_one():
    from second_order.suite.cli import did_you_mean

    assert "did you mean trainer.epochs?" in config_error(["trainer.epochz=3"])
    assert "did you mean optimizer.damping?" in config_error(["optimizer=hessian_free", "optimizer.dampin=3"])
    far = "Could not override 'trainer.zzzzzz'.; To append to your config use +trainer.zzzzzz=3"
    assert did_you_mean(far) == far  # nothing close: Hydra's message as it was
    other = "Could not override 'optimizer.damping'.; To append to your config use +optimizer.damping=3"
    assert did_you_mean(other) == other  # SGD has no damping, other optimizers do: no self-suggestion


@pytest.mark.parametrize(
    "override,key",
    [("optimizer=bogus", "bogus"), ("trainer.epochz=3", "epochz"), ("trainer.epochs=abc", "trainer.epochs")],
)
def test_cli_reports_hydra_errors_in_one_line_with_status_2(override, key):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), override, "data.dir=/x"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert "search path" not in lines[0], lines[0]  # Hydra's provider list is noise to a user


def test_an_unknown_group_option_names_the_closest_and_every_one():
    hydra_says = (  # hydra.errors.MissingConfigException, as Hydra 1.3 words it
        "In 'config': Could not find 'optimizer/trust_region'\n\nAvailable options in 'optimizer':\n"
        "\tnewton_lanczos\n\tsgd\n\ttrust_region_cg\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf"
    )
    assert missing_option(hydra_says) == (
        "optimizer=trust_region: no such file configs/optimizer/trust_region.yaml; "
        "did you mean optimizer=trust_region_cg? available: newton_lanczos, sgd, trust_region_cg"
    )
    far = missing_option(hydra_says.replace("trust_region'", "zzz'")) or ""
    assert far.endswith("zzz.yaml; available: newton_lanczos, sgd, trust_region_cg"), far  # nothing close
    assert missing_option("Could not override 'trainer.epochz'.") is None  # not a missing option
