"""The layering contract: the core needs jax and optax only; the report never imports optimizers.

Walks the import statements of every module (``ast``), so a violation fails
``make test`` whatever code path would have triggered it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO

SRC = REPO / "src" / "second_order"
CORE = [*sorted(SRC.glob("*.py")), *sorted((SRC / "optim").glob("*.py"))]  # everything but suite/
REPORT = sorted((SRC / "suite" / "report").glob("*.py"))
SUITE_ONLY = ("hydra", "omegaconf", "wandb", "matplotlib", "tqdm", "flax", "yaml", "numpy", "second_order.suite")
STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> set[str]:
    """Every module named by an import statement of ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO / "src").with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(paths: list[Path], allowed: tuple[str, ...], forbidden: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in paths:
        for name in sorted(imports(path)):
            top = name.split(".")[0]
            if any(name == f or name.startswith(f + ".") for f in forbidden) or (
                allowed
                and top not in STDLIB
                and top != "__future__"
                and not any(name == a or name.startswith(a + ".") for a in allowed)
            ):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    return bad


def test_core_imports_only_jax_optax_and_itself():
    allowed = ("jax", "optax", "second_order.curvature", "second_order.solvers", "second_order.optim", "second_order")
    assert violations(CORE, allowed, forbidden=SUITE_ONLY) == []


def test_report_does_not_import_the_optimizers_or_the_trainer():
    forbidden = (
        "second_order.optim",
        "second_order.curvature",
        "second_order.solvers",
        "second_order.suite.training",
        "second_order.suite.experiment",
        "jax",
        "optax",
    )
    assert violations(REPORT, (), forbidden=forbidden) == []


def test_the_contract_catches_a_violation(tmp_path):
    fake = SRC / "optim" / "_layering_probe.py"
    fake.write_text("import hydra\nfrom second_order.suite import config\n")
    try:
        assert len(violations([fake], ("jax", "optax"), forbidden=SUITE_ONLY)) == 3
    finally:
        fake.unlink()


@pytest.mark.slow
def test_core_installs_alone_and_steps_every_optimizer(tmp_path):
    """A fresh venv with the core only (jax, optax from this machine's wheels cache or PyPI)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-warn-script-location", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = r"""
import importlib.util, inspect, jax, jax.numpy as jnp, optax
import second_order.optim as so
for absent in ("hydra", "omegaconf", "wandb", "matplotlib", "tqdm", "flax"):
    assert importlib.util.find_spec(absent) is None, absent + " was installed with the core"
params = {"layer": {"kernel": jnp.array([[1.0, -0.5], [0.3, 2.0]]), "bias": jnp.array([0.1, -0.2])}}
x, y = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.2, 0.1]]), jnp.array([0, 1, 1])
def tapped_predict_fn(p, taps):  # a Dense layer (kernel (in, out), bias), its pre-activation tapped
    s = x @ p["layer"]["kernel"] + p["layer"]["bias"]
    return jnp.tanh(s if taps is None else s + taps["layer"]), {"layer": x}
def predict_fn(p): return tapped_predict_fn(p, None)[0]
def output_loss_fn(z): return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
def value_fn(p): return output_loss_fn(predict_fn(p))
names = [n for n in so.__all__ if inspect.isfunction(getattr(so, n)) and n != "collect_diagnostics"]
for name in names:
    fn = getattr(so, name)
    needs = [k for k, v in inspect.signature(fn).parameters.items() if v.default is v.empty]
    tx = fn(**{k: (0.5 if k == "learning_rate" else 1.0) for k in needs})
    state = tx.init(params)
    grads = jax.grad(value_fn)(params)
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=value_fn, predict_fn=predict_fn,
                                                        output_loss_fn=output_loss_fn,
                                                        tapped_predict_fn=tapped_predict_fn))(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert value_fn(new) < value_fn(params), name
    print(name, float(value_fn(params)), "->", float(value_fn(new)), sorted(so.collect_diagnostics(state)))
"""
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {line.split()[0] for line in run.stdout.splitlines()} >= {"newton", "hessian_free", "gauss_newton"}
