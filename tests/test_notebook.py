"""notebooks/explore_runs.ipynb: stored clean, and runs top to bottom on real run directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose_config, mnist_dir

NOTEBOOK = REPO / "notebooks" / "explore_runs.ipynb"


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "RUN_ROOTS" in params[0].source and "RUNS_ROOT" in params[0].source


def _data_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """Real MNIST when available, else a tiny synthetic IDX set (60 train / 20 test)."""
    real = mnist_dir()
    if real is not None:
        return real, []
    from second_order.suite.data import write_idx

    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(d, split, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
    return d, ["trainer.batch_size=20"]


def _kernel_manager(tmp_path: Path, env: dict[str, str]):
    """A kernel that runs this interpreter (the one with second_order installed)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "second-order-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "second-order test",
                "language": "python",
                "env": env,
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="second-order-test", kernel_spec_manager=ksm)


@pytest.mark.slow
def test_notebook_executes_on_runs(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    from second_order.suite import experiment

    data_dir, extra = _data_dir(tmp_path)
    root = tmp_path / "runs"
    for name in ("sgd", "hessian_free"):
        experiment.run(
            compose_config(
                [
                    f"optimizer={name}",
                    f"data.dir={data_dir}",
                    "trainer.max_steps=30",
                    "trainer.chunk_steps=10",
                    "logger.wandb.mode=disabled",
                    "trainer.progress=false",
                    *extra,
                ]
            ),
            root / name / "seed0",
        )

    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = _kernel_manager(tmp_path, {"RUNS_ROOT": str(root), "MPLBACKEND": "Agg"})
    client = nbclient.NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(
        o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "") for o in outputs
    )
    assert "2 runs of 2 optimizers" in text
    summary = next(o.data for o in outputs if "text/html" in o.get("data", {}) and "optimizer" in o.data["text/html"])
    assert "sgd" in summary["text/html"] and "hessian_free" in summary["text/html"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 4  # loss vs step, loss vs time, CG diagnostics, accuracy
    assert "Exact Newton: no runs log these diagnostics, skipped" in text
