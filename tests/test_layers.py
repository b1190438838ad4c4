"""The layering contract: each layer imports only the layers below it.

unit (maths) < models < tasks < cli/tools; data stands beside models; callbacks read module roles
from unit, never model or task internals. Every import statement in each file is checked,
including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("tasks", "data", "strategies", "tools", "cli", "callbacks", "reliability")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "lit_unitscale/unit": ("lightning", "pytorch_lightning", "lit_unitscale.models")
    + tuple(f"lit_unitscale.{u}" for u in UPPER),
    "lit_unitscale/models": ("lightning", "pytorch_lightning")
    + tuple(f"lit_unitscale.{u}" for u in UPPER),
    "lit_unitscale/data": tuple(
        f"lit_unitscale.{u}" for u in ("models", "tasks", "strategies", "tools", "cli", "callbacks")
    ),
    "lit_unitscale/callbacks": tuple(
        f"lit_unitscale.{u}" for u in ("models", "tasks", "data", "tools", "cli")
    ),
}


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


CASES = [(layer, p) for layer in FORBIDDEN for p in sorted((ROOT / layer).rglob("*.py"))]


def test_every_layer_has_files() -> None:
    for layer in FORBIDDEN:
        assert any(p for lay, p in CASES if lay == layer), layer


@pytest.mark.parametrize(
    ("layer", "path"), CASES, ids=lambda v: str(v).replace(str(ROOT) + "/", "")
)
def test_layer_imports(layer: str, path: Path) -> None:
    bad = [
        name
        for name in imports_of(path)
        for prefix in FORBIDDEN[layer]
        if name == prefix or name.startswith(prefix + ".")
    ]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}, above its layer ({layer})"
