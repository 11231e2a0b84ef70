"""Packaging: environment.yml (conda) and pyproject.toml (pip) agree; .ci/gpu.sh carries what a GPU image lacks."""

import os
import tomllib

import pytest
import yaml
from conftest import REPO


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= set(extra)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {d for d in pip_section if not d.startswith("-e")}
    assert listed == declared
    assert "-e ." in pip_section


def _shell_list(script: str, name: str) -> set[str]:
    """The words of ``NAME="..."`` in a shell script (may span lines)."""
    import re

    match = re.search(rf'^{name}="([^"]*)"', script, re.M)
    assert match, f"{name} not in .ci/gpu.sh"
    return set(match.group(1).split())


def test_the_offline_gpu_script_carries_every_suite_dependency():
    """.ci/gpu.sh fetch: what a GPU image lacks goes as wheels, at the versions installed here."""
    import importlib.metadata
    import re
    import subprocess

    script = (REPO / ".ci" / "gpu.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "gpu.sh")]).returncode == 0
    needed, image = _shell_list(script, "NEEDED"), _shell_list(script, "IMAGE_HAS")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    suite = {
        re.split(r"[<>=!\[ ]", d)[0].lower()
        for d in project["dependencies"] + project["optional-dependencies"]["suite"]
    }
    assert suite - needed - image == set(), "add them to NEEDED (or IMAGE_HAS) in .ci/gpu.sh"
    for name in needed:  # fetch pins each to the version installed here
        assert importlib.metadata.version(name), name


@pytest.mark.slow
def test_the_offline_gpu_check_runs_its_steps_in_a_dry_run(tmp_path, real_mnist_dir):
    """.ci/gpu.sh check on this CPU (no wheels, the CPU allowed): versions, the benchmark's
    command, the tests' command, each with its log in OUT."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_SH_DRY": "1",
        "GPU_SH_MNIST": str(real_mnist_dir),
        "BENCH_ARGS": "--help",
        "TESTS": "tests/test_packaging.py -k environment_yml",
    }
    proc = subprocess.run(["bash", ".ci/gpu.sh", "check", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jax " in proc.stdout and "bench: exit status 0" in proc.stdout and "tests: exit status 0" in proc.stdout
    assert "usage: python -m benchmarks" in (tmp_path / "bench.log").read_text()
    assert "1 passed" in (tmp_path / "tests.log").read_text()
