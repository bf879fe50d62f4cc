"""The README's Python examples run as written (each block in a fresh namespace), and its ci:commands block is
the two `python3 ...` lines that .ci/run extracts, running the installed build."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_examples():
    assert len(BLOCKS) >= 3
    assert any("maskrnn.torch" in b for b in BLOCKS)


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_python_block_runs(n):
    code = BLOCKS[n]
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md python block {n}", "exec"), {"__name__": "__readme__"})


def test_ci_commands_run_the_installed_build():
    block = re.search(r"<!-- ci:commands -->\n```bash\n(.*?)```\n<!-- /ci:commands -->", README.read_text(), re.S)
    commands = [line for line in block.group(1).splitlines() if line.startswith("python3 ")]
    assert len(commands) == 2
    assert commands[0].endswith(".venv/bin/maskrnn bench"), "the main job must run the installed console script"
