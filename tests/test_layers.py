"""The package's layers (docs: /work/shared/layout.md): each part imports only the parts below it."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pigpt"
# part -> the parts of pigpt it may import (itself always)
ALLOWED = {
    "model": set(),
    "kernels": set(),
    "decoding": {"kernels", "model"},
    "viz": {"decoding", "model"},
    "training": {"decoding", "model"},
    "policy": {"training", "decoding", "model", "kernels"},
}


def _imports(path: Path, part: str) -> set[str]:
    """The pigpt parts a module imports (absolute `pigpt.X` and relative imports alike)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level == 1:
                names = [f"pigpt.{part}"]
            else:  # from .. import x / from ..x import y, inside pigpt/<part>/
                names = [f"pigpt.{node.module}" if node.module else f"pigpt.{a.name}" for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "pigpt" and len(bits) > 1:
                out.add(bits[1])
    return out


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_the_layers_below_it(part):
    bad = {}
    for path in sorted((PKG / part).rglob("*.py")):
        wrong = _imports(path, part) - ALLOWED[part] - {part}
        if wrong:
            bad[str(path.relative_to(PKG))] = sorted(wrong)
    assert not bad, f"imports across the layers: {bad}"
