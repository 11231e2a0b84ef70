"""Trains every named optimizer for a few steps on 1 and on N devices; prints the per-step losses as JSON.

Run in its own process (``tests/test_devices.py``), where
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives the CPU N devices::

    python tests/multidevice_worker.py MNIST_DIR OUT.json N sgd hessian_free ...

Each optimizer runs through the trainer (``fit``: the real sharded chunks, evaluation
and checkpoints) with ``trainer.devices=1`` and ``trainer.devices=N``, float64
parameters and float64 curvature products, on the first 1,024 MNIST training images.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

STEPS, CHUNK, TRAIN, TEST = 4, 2, 1024, 256


def float64_overrides(name: str, repo: Path) -> list[str]:
    """Overrides that put an optimizer's curvature products in float64 (the presets keep the paper's float32)."""
    import yaml

    written = yaml.safe_load((repo / "configs" / "optimizer" / f"{name}.yaml").read_text())
    keys = written.get("optimizer") or written
    return [f"optimizer.{k}=float64" for k in ("product_dtype", "first_step_dtype") if keys.get(k) == "float32"]


def main() -> None:
    mnist_dir, out, n, names = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import REPO, compose_config

    from second_order.optim import collect_diagnostics
    from second_order.suite.data import load_dataset
    from second_order.suite.experiment import prepare
    from second_order.suite.model import build_model
    from second_order.suite.optimizer_config import init_state_shapes
    from second_order.suite.tracking.run_logger import RunLogger
    from second_order.suite.tracking.runs import read_table
    from second_order.suite.training.devices import Placement, select_devices
    from second_order.suite.training.trainer import fit

    full = load_dataset("mnist", mnist_dir)
    data = dataclasses.replace(
        full,
        train_images=full.train_images[:TRAIN],
        train_labels=full.train_labels[:TRAIN],
        test_images=full.test_images[:TEST],
        test_labels=full.test_labels[:TEST],
    )
    results: dict[str, dict[str, object]] = {}
    for name in names:
        overrides = [f"optimizer={name}", "model.hidden=[2]", "model.param_dtype=float64", f"data.dir={mnist_dir}"]
        overrides += [f"trainer.max_steps={STEPS}", f"trainer.chunk_steps={CHUNK}", "trainer.progress=false"]
        rc, tx = prepare(compose_config(overrides + float64_overrides(name, REPO)))
        model = build_model(rc.model, data.image_shape)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.train_images[:1])["params"]
        shapes = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, "float64"), shapes)
        diag_names = list(collect_diagnostics(init_state_shapes(rc.optimizer, tx, shapes)))
        losses: dict[str, object] = {"seconds": time.perf_counter()}
        uneven = (3,) if name == "sgd" and n > 3 else ()  # 64 examples over 3 devices
        for devices in (1, n, *uneven):
            placement = Placement.over(select_devices(devices))
            assert placement.num_devices == devices
            with tempfile.TemporaryDirectory() as tmp:
                logger = RunLogger(Path(tmp), diag_names)
                outcome = fit(
                    model=model,
                    tx=tx,
                    data=data,
                    settings=rc.trainer,
                    seed=0,
                    run_dir=Path(tmp),
                    logger=logger,
                    param_dtype="float64",
                    placement=placement,
                )
                logger.close()
                steps = read_table(Path(tmp) / "steps.csv")
                losses[str(devices)] = {
                    "status": outcome.status,
                    "train_loss": np.asarray(steps["train_loss"]).tolist(),
                    "test_loss": outcome.last_eval.get("test_loss"),
                }
        losses["seconds"] = time.perf_counter() - float(losses["seconds"])  # type: ignore[arg-type]
        results[name] = losses
    out.write_text(json.dumps({"devices": jax.device_count(), "results": results, "hlo": partitioned_step(n)}))


def partitioned_step(n: int) -> dict[str, bool]:
    """What XLA made of Gauss-Newton's chunk on ``n`` devices: per-device batches and all-reduces."""
    from conftest import compose_config

    from second_order.suite.experiment import prepare
    from second_order.suite.model import build_model
    from second_order.suite.training.devices import Placement, select_devices
    from second_order.suite.training.step import make_chunk_fn

    rc, tx = prepare(compose_config(["optimizer=gauss_newton", "model.hidden=[2]", "data.dir=/x"]))
    model = build_model(rc.model, (28, 28, 1))
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 784), np.float32))["params"]
    place = Placement.over(select_devices(n))
    args = place.replicate((params, tx.init(params), np.zeros((128, 784), np.float32), np.zeros(128, np.int32)))
    idx = place.replicate(np.arange(64, dtype=np.int32).reshape(1, 64))
    chunk: Any = make_chunk_fn(model.apply, tx, place)  # type: ignore[arg-type]  # jitted: has .lower
    text = chunk.lower(*args, idx).compile().as_text()
    return {"all_reduce": "all-reduce" in text, "per_device_batch": f"[{64 // n},784]" in text}


if __name__ == "__main__":
    main()
