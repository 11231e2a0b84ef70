"""``python -m benchmarks --quick`` on real MNIST: it runs end to end and writes every section.

No timing assertions: the numbers depend on the machine and its load; only their
presence, positivity and the output files are checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO


def positive(t) -> bool:
    return isinstance(t, dict) and isinstance(t.get("median_s"), (int, float)) and t["median_s"] > 0


@pytest.fixture(scope="module")
def quick_bench(real_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "WANDB_SILENT": "true", "MNIST_DIR": str(real_mnist_dir)}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jsons = list(out.glob("*.json"))
    assert len(jsons) == 1, jsons
    return out, json.loads(jsons[0].read_text()), proc.stdout


@pytest.mark.slow
def test_writes_json_markdown_and_plot(quick_bench):
    out, res, stdout = quick_bench
    device = res["device"]
    assert device and (out / f"{device}.md").stat().st_size > 0
    assert (out / f"scaling_{device}.png").stat().st_size > 0
    assert res["quick"] is True and "bench summary" in stdout
    env = res["environment"]
    assert env["packages"]["jax"] and env["device_kind"] and env["x64"] is True
    assert env["xla_flags"] == (os.environ.get("XLA_FLAGS") or None)  # the timings depend on them
    if env["xla_flags"]:
        assert f"XLA_FLAGS: `{env['xla_flags']}`" in (out / f"{device}.md").read_text()
    assert set(res["wall_s"]) >= {"parts", "epoch", "baseline", "scaling", "total"}


@pytest.mark.slow
def test_parts_and_ratios(quick_bench):
    _, res, _ = quick_bench
    p = res["parts"]
    assert p["param_count"] > 0 and p["batch"] == 64 and p["solve_dtype"] == "float64"
    for key in ("gradient", "gradient_f64", "hvp", "ggn_vp", "dense_hessian", "jax_hessian", "cholesky"):
        assert positive(p["parts"][key]), key
        assert p["parts"][key]["compile_s"] > 0 and p["parts"][key]["warmup_s"] > 0
    assert "skipped" in p["parts"]["eigh"]  # --quick never runs the n x n eigendecomposition
    for method in ("hessian_free", "gauss_newton"):
        for state in ("init", "trained"):
            c = p["cg"][method][state]
            assert c["iterations_median"] >= 1 and c["time_per_iteration_s"] > 0
    for method in ("sgd", "hessian_free", "gauss_newton", "newton_damped"):
        assert positive(p["steps"][method]), method
    assert p["steps"]["hessian_free"]["diagnostics"]["cg_iterations"] >= 1
    assert p["steps"]["newton_damped"]["diagnostics"]["solve_path"] == 0  # Cholesky
    for method in ("sgd", "hessian_free", "gauss_newton", "kfac"):  # the mean step over consecutive steps
        run = p["steps"][method]["run"]
        assert run["steps"] == 20 and run["per_step_s"] > 0 and run["final_loss"] is not None, method
        assert run["gradient_per_step_s"] > 0  # timed round-robin with the run: the denominator
        assert p["ratios"]["step_over_gradient"][method] == pytest.approx(
            run["per_step_s"] / run["gradient_per_step_s"]
        )
    gradient = p["parts"]["gradient_consecutive"]
    assert gradient["steps"] == 20 and gradient["pairs"] == 4 and gradient["min_s"] <= gradient["median_s"]
    assert p["ratios"]["step_over_gradient"]["newton_damped"] == pytest.approx(
        p["steps"]["newton_damped"]["median_s"] / gradient["median_s"]
    )
    assert "run" not in p["steps"]["newton_damped"]  # --quick times the others' first step only
    if p["low_rank_available"]:
        assert positive(p["steps"]["newton_lowrank"])
    r = p["ratios"]
    for key in (
        "hvp_over_gradient",
        "ggn_over_gradient",
        "newton_damped_step_over_hessian_plus_cholesky",
        "jax_hessian_over_dense_hessian",
    ):
        assert r[key] > 0 and math.isfinite(r[key]), key
    assert all(r["step_over_gradient"][m] > 0 for m in ("sgd", "hessian_free", "gauss_newton", "newton_damped"))
    assert all(r["first_step_over_gradient"][m] > 0 for m in ("sgd", "kfac", "newton_damped"))


@pytest.mark.slow
def test_epoch_trainer_vs_yardstick(quick_bench):
    _, res, _ = quick_bench
    e = res["epoch"]
    assert set(e["methods"]) == {"sgd", "hessian_free", "gauss_newton"}
    for m, v in e["methods"].items():
        assert v["trainer_median_s"] > 0 and positive(v["yardstick"]) and v["ratio"] > 0, m
        assert all(st == "budget" for st in v["trainer_status"])  # max_steps < one epoch in --quick


@pytest.mark.slow
def test_baseline_speedups(quick_bench):
    _, res, _ = quick_bench
    b = res["baseline"]["methods"]
    for m in ("sgd", "hessian_free", "gauss_newton", "newton"):
        assert b[m]["speedup"] > 0 and b[m]["jit"]["per_step_s"] > 0 and b[m]["ours"]["per_step_s"] > 0, m
    for m in ("hessian_free", "gauss_newton"):
        assert b[m]["eager"]["speedup"] > 0
    assert "note" in b["newton"]  # the reduced width is said in the output


@pytest.mark.slow
def test_scaling_rows(quick_bench):
    _, res, _ = quick_bench
    sc = res["scaling"]
    measured = [r for r in sc["rows"] if positive(r["step"])]
    assert {r["method"] for r in measured} >= {"sgd", "hessian_free", "gauss_newton"}
    assert len({r["param_count"] for r in measured}) == len(sc["widths"]) >= 2


def test_methods_come_from_the_configs():
    """Every configs/optimizer/*.yaml is a benchmarked method with the config's own hyperparameters."""
    from benchmarks.methods import CONFIG_DIR, compose, load_methods

    methods = load_methods()
    stems = {p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml")}
    assert {m.config for m in methods.values()} == stems
    for key, m in methods.items():
        assert m.optimizer == compose([f"optimizer={m.config}"])["optimizer"], key
        assert key in (m.name, m.name + "_lowrank")
        assert m.low_rank == key.endswith("_lowrank")
        if "max_rank" in m.optimizer:  # both solve paths of a max_rank config are benchmarked
            assert {m.name, m.name + "_lowrank"} <= set(methods)


def test_build_tx_follows_the_config():
    """The config → transformation step gives the optimizer the config describes."""
    import jax.numpy as jnp

    from benchmarks.methods import load_methods

    methods = load_methods()
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 2.0)}
    sgd = methods["sgd"]
    tx = sgd.tx()
    updates, _ = tx.update(grads, tx.init(params), params)
    assert jnp.allclose(updates["w"], -sgd.learning_rate * grads["w"])


def test_settings_read_the_configs(tmp_path):
    """Paper sizes (width, batch, classes, one epoch) come from the composed config, not from the benchmark."""
    from benchmarks.cli import parse_args
    from benchmarks.methods import compose
    from benchmarks.settings import make_settings

    cfg = compose(["trainer.batch_size=32", "model.hidden=[7]"])
    s = make_settings(parse_args(["--out", str(tmp_path)]), cfg, n_train=6400)
    assert (s.batch, s.paper_hidden, s.part_hidden, s.epoch_steps) == (32, 7, 7, 200)
    assert s.min_total_s == 0.3 and s.batches[0] == 32
    q = make_settings(parse_args(["--quick", "--out", str(tmp_path)]), cfg, n_train=6400)
    assert q.min_total_s == 0.1 and q.part_hidden == 2 and not q.eigh


def test_trainer_breakdown_uses_the_trainers_chunk_fn(tmp_path):
    """The epoch section's breakdown (the trainer's own chunk function, in one call and in chunks) runs."""
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.cli import parse_args
    from benchmarks.epoch import trainer_breakdown
    from benchmarks.methods import compose, load_methods
    from benchmarks.problem import Problem
    from benchmarks.settings import make_settings

    rng = np.random.default_rng(0)
    data = SimpleNamespace(
        train_images=rng.random((320, 784), dtype=np.float32), train_labels=rng.integers(0, 10, 320).astype(np.int32)
    )
    s = make_settings(parse_args(["--quick", "--out", str(tmp_path)]), compose(), n_train=320)
    prob = Problem(data, 2, 16, s.num_classes)
    idx = prob.perm(0)[:12]
    out = trainer_breakdown(prob, load_methods()["sgd"].tx(), idx, 5, s)
    assert out["trainer_chunk_fn_one_call"]["median_s"] > 0
    assert out["trainer_chunk_fn_in_chunks"]["median_s"] > 0 and out["trainer_chunk_fn_in_chunks"]["chunk_steps"] == 5


def test_the_paired_gradients_summary():
    """parts.gradient_consecutive: the median of the gradients timed with each mean step; skipped without any."""
    from benchmarks.mean_step import gradient_summary

    settings = type("S", (), {"run_steps": 100})
    assert "skipped" in gradient_summary([], settings)  # type: ignore[arg-type]
    runs = [{"gradient_per_step_s": v} for v in (3e-4, 1e-4, 2e-4)]
    got = gradient_summary(runs, settings)  # type: ignore[arg-type]
    assert got["median_s"] == got["per_step_s"] == 2e-4 and got["pairs"] == 3 and got["steps"] == 100
    assert (got["min_s"], got["max_s"]) == (1e-4, 3e-4)


def test_a_missing_mnist_directory_is_one_line(tmp_path, capsys):
    from benchmarks.cli import main

    assert main(["--quick", "--out", str(tmp_path), "--mnist-dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: MNIST directory {tmp_path / 'absent'}"), err
    assert not list(tmp_path.iterdir())  # nothing written
