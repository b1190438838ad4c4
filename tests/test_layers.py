"""The layering contract: each part of the package imports only the parts below it.

errors < unit (maths) < models < tasks < cli < tools; data and metrics stand beside models;
checkpoints read models' config; callbacks read module roles from unit, never model, data or
task internals; strategies apply parallelism to models and know checkpoints, not tasks. Every import
statement in every file is checked, relative ones and those inside functions included, and
every folder and module of the package must have a place here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_unitscale"

# What each part of the package may import from the others.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "unit": {"errors"},
    "metrics": set(),
    "models": {"errors", "unit"},
    "data": {"errors"},
    "checkpoints": {"errors", "models"},
    "callbacks": {"errors", "unit", "checkpoints"},
    "strategies": {"errors", "unit", "models", "checkpoints"},
    "tasks": {
        "errors",
        "unit",
        "metrics",
        "models",
        "data",
        "checkpoints",
        "callbacks",
        "strategies",
    },
    "cli": {
        "errors",
        "unit",
        "metrics",
        "models",
        "data",
        "checkpoints",
        "callbacks",
        "strategies",
        "tasks",
    },
    "tools": {
        "errors",
        "unit",
        "metrics",
        "models",
        "data",
        "checkpoints",
        "callbacks",
        "strategies",
        "tasks",
        "cli",
    },
    "__init__": set(),
    "__main__": {"cli"},
}
# The maths and the models are plain PyTorch: they run without Lightning.
NO_LIGHTNING = {"errors", "unit", "metrics", "models"}


def part_of(rel: Path) -> str:
    """The part of the package a file belongs to (``rel`` relative to the package)."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(source: str, rel: Path) -> list[str]:
    """Absolute module names of every import in ``source``, the file at ``rel`` in the
    package (relative imports resolved)."""
    package = ["lit_unitscale", *rel.parts[:-1]]
    names = []
    for node in ast.walk(ast.parse(source, filename=str(rel))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


def violations(source: str, rel: Path) -> list[str]:
    part = part_of(rel)
    bad = []
    for name in imports_of(source, rel):
        top, _, rest = name.partition(".")
        if top in ("lightning", "pytorch_lightning") and part in NO_LIGHTNING:
            bad.append(name)
        if top == "lit_unitscale" and rest:
            other = rest.split(".")[0]
            if other != part and other not in ALLOWED[part]:
                bad.append(name)
    return bad


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(p.relative_to(PACKAGE)) for p in FILES}
    unplaced = parts - set(ALLOWED)
    assert not unplaced, f"give {sorted(unplaced)} a place in tests/test_layers.py ALLOWED"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_imports(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    bad = violations(path.read_text(), rel)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}, above its layer ({part_of(rel)})"


def test_the_check_sees_relative_and_nested_imports() -> None:
    """The checker itself: an upward relative import, one inside a function and Lightning in
    the maths are caught; an import from below is not."""
    source = (
        "from ..tasks import base\nfrom . import splits\n"
        "def f():\n    import lit_unitscale.models\n"
    )
    assert violations(source, Path("data/probe.py")) == [
        "lit_unitscale.tasks",
        "lit_unitscale.models",
    ]
    assert violations("import lightning\n", Path("unit/probe.py")) == ["lightning"]
    assert violations("from lit_unitscale.unit import scale\n", Path("models/x.py")) == []
