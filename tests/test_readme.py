"""The README's code examples run as written."""

import ast
import math
import re
import subprocess
import sys

from conftest import REPO


def readme_section_code(title: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python block under '## {title}'"
    return "\n".join(blocks)


def test_own_training_loop_example_runs():
    code = readme_section_code("Use the optimizers in your own training loop")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loss = float(re.search(r"loss (\d+\.\d+)", proc.stdout).group(1))
    assert loss < 1.0  # ln 3 ≈ 1.10 at the start: 20 Gauss-Newton steps learn something
    assert "cg_iterations" in proc.stdout


def swappable_optimizers(code: str) -> tuple[str, list[str]]:
    """The example's ``tx = ...`` line and the alternatives its comment names (``# or a(...), b(...),``)."""
    lines = code.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("tx = ")]
    expression, comment = lines[start].split("  # or ", 1)
    for line in lines[start + 1 :]:
        if not line.startswith("#"):
            break
        comment += " " + line.lstrip("# ")
    alternatives = ast.parse(f"[{comment}]", mode="eval").body
    assert isinstance(alternatives, ast.List)
    return expression, [ast.unparse(a) for a in alternatives.elts]


def test_every_optimizer_the_example_names_is_imported_and_drops_in():
    """Each optimizer the comment suggests, swapped in for ``tx``, runs as written (no NameError, finite loss)."""
    code = readme_section_code("Use the optimizers in your own training loop")
    expression, alternatives = swappable_optimizers(code)
    names = {a.split("(", 1)[0] for a in alternatives}
    assert {"hessian_free", "newton", "trust_region", "saddle_free_newton", "kfac", "shampoo", "sophia"} <= names
    imported = {alias.name for node in ast.walk(ast.parse(code)) if isinstance(node, ast.ImportFrom)
                for alias in node.names}  # fmt: skip
    assert names <= imported, f"named in the comment but not imported: {sorted(names - imported)}"
    assert "range(20)" in code
    variants = [code.replace(expression, f"tx = {a}", 1).replace("range(20)", "range(3)") for a in alternatives]
    runner = "import sys\nfor source in sys.argv[1:]:\n    exec(source, {})\n"  # a fresh namespace each
    proc = subprocess.run(
        [sys.executable, "-c", runner, *variants], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    losses = [float(v) for v in re.findall(r"^loss (\S+) ", proc.stdout, flags=re.M)]
    assert len(losses) == len(alternatives) and all(math.isfinite(v) for v in losses), proc.stdout


def readme_subsection(title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading of any level."""
    text = (REPO / "README.md").read_text()
    start = re.search(rf"^#+ {re.escape(title)}\n", text, flags=re.M)
    assert start, f"no heading '{title}'"
    rest = text[start.end() :]
    end = re.search(r"^#+ ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def test_configuration_names_every_config_group_and_optimizer():
    """The config groups the README lists are the folders of configs/ and the ConfigStore's own groups."""
    from hydra.core.config_store import ConfigStore

    from second_order.suite.config import register

    section = readme_subsection("Configuration")
    folders = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir() and p.name != "hydra")
    for folder in [*folders, "hydra/launcher"]:
        assert f"`{folder}/`" in section or f"`configs/{folder}/`" in section, folder
    for optimizer in sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml")):
        assert f"`{optimizer}`" in section, optimizer
    register()
    for group in ("trainer", "logger"):  # ConfigStore entries, not folders
        assert ConfigStore.instance().list(group) and not (REPO / "configs" / group).exists()
        assert f"`{group}/`" not in section and f"`{group}`" in section


def test_results_provenance_matches_the_committed_files():
    """The table of which command produced which file in results/ agrees with the manifest and the files."""
    import json

    section = readme_subsection("Which command produced which file in `results/`")
    manifest = json.loads((REPO / "results" / "manifest.json").read_text())
    command = 'make reproduce ARGS="--paper-precision --beyond-paper --baselines --curvature"'
    assert manifest["command"] == command
    minutes = f"{manifest['wall_time_s']['total'] / 60:.0f}"
    assert f"`{command}` ({minutes} min" in section, f"the README should quote {minutes} min"
    counted = {}
    for entry in manifest["runs"]:
        root = entry["run_dir"].split("/")[1]  # runs/<set>/<method>/seed<k>
        counted[root] = counted.get(root, 0) + 1
    for root, n in counted.items():
        assert f"`runs/{root}/`" in section and f"({n} runs" in section, (root, n)
    assert f"{len(manifest['runs'])} runs" in section
    table = (REPO / "results" / "table2_train_loss.md").read_text()
    methods = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert f"{len(methods)} methods" in section and len(methods) == 17
    committed = {int(p.name[3:5]) for p in (REPO / "results").glob("fig*.png")}
    named = set()
    for first, last in re.findall(r"figures? (\d+)(?:–(\d+))?", section):
        named |= set(range(int(first), int(last or first) + 1))
    assert committed <= named, f"figures without a command: {sorted(committed - named)}"
