"""The README's Python blocks run as written, on the shipped model: a user who copies them gets no error."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # the blocks name the shipped model by name: they run from any folder
    namespace: dict = {}
    for block in BLOCKS[: i + 1]:  # later blocks use the names earlier ones defined
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert capsys.readouterr().out.strip()  # every block prints what it shows
