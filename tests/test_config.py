"""Config composition for every optimizer and experiment, and validation of bad values."""

from pathlib import Path

import pytest

from conftest import REPO, compose_config
from second_order.suite.config import ConfigError, validate
from second_order.suite.experiment import build_optimizer, prepare

OPTIMIZERS = sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))

PAPER = {  # name: (learning rate, damping)
    "sgd": (0.1, None),
    "newton": (0.5, 0.0),
    "newton_damped": (0.5, 32.0),
    "hessian_free": (0.5, 32.0),
    "gauss_newton": (0.5, 4.0),
}


def test_exactly_the_paper_optimizers():
    assert OPTIMIZERS == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_optimizer_configs_have_paper_defaults_and_build(name):
    cfg = compose_config([f"optimizer={name}", "data.dir=/nonexistent"])
    rc, tx = prepare(cfg)
    assert rc.optimizer.name == name
    lr, damping = PAPER[name]
    assert rc.optimizer.kwargs["learning_rate"] == lr
    assert rc.optimizer.kwargs.get("damping") == damping
    if name in ("hessian_free", "gauss_newton"):
        assert rc.optimizer.kwargs["tol"] == 1e-5 and rc.optimizer.kwargs["maxiter"] is None
    assert rc.trainer.epochs == 7 and rc.trainer.batch_size == 64
    assert rc.model.hidden == (10,)
    if name.startswith("newton"):
        assert rc.optimizer.kwargs["max_rank"] == 640 and rc.trainer.chunk_steps == 1
    assert callable(tx.update)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose(name):
    cfg = compose_config([f"experiment={name}", "data.dir=/nonexistent"])
    rc = validate(cfg)
    assert rc.experiment_name == name


def test_experiment_sweeps_cover_the_figure_groups():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fig09_11_gauss_newton"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.optimizer == "sgd,hessian_free,gauss_newton"


def test_stable_keys_exist():
    cfg = compose_config(["data.dir=/x"])
    for dotted in ["optimizer.learning_rate", "trainer.epochs", "trainer.batch_size", "trainer.max_steps",
                   "data.dir", "seed", "logger.wandb.mode"]:
        node = cfg
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]
    assert "damping" in compose_config(["optimizer=hessian_free"])["optimizer"]


def test_mnist_dir_env_is_the_default(monkeypatch):
    monkeypatch.setenv("MNIST_DIR", "/some/where")
    assert compose_config([])["data"]["dir"] == "/some/where"


BAD = [
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["optimizer=hessian_free", "optimizer.damping=-1"], "optimizer.damping"),
    (["optimizer=gauss_newton", "optimizer.tol=1.5"], "optimizer.tol"),
    (["optimizer=gauss_newton", "optimizer.tol=0"], "optimizer.tol"),
    (["optimizer=hessian_free", "optimizer.maxiter=0"], "optimizer.maxiter"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.batch_size=-3"], "trainer.batch_size"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["trainer.epochs=2.5"], "trainer.epochs"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["model.hidden=[0]"], "model.hidden"),
    (["seed=-1"], "seed"),
    (["logger.wandb.mode=sometimes"], "logger.wandb.mode"),
    (["+trainer.epochz=3"], "trainer.epochz"),
    (["+optimizer.dampin=3"], "optimizer.dampin"),
    (["+banana=1"], "banana"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[k for _, k in BAD])
def test_bad_values_rejected_with_key_named(overrides, key):
    cfg = compose_config(overrides + ["data.dir=/x"])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message
