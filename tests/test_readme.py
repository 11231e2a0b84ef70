"""The README's code examples run as written."""

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
