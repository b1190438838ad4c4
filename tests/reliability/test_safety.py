"""Nothing a user hands us is unpickled beyond tensors and plain data."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SOURCES = list((ROOT / "lit_unitscale").rglob("*.py"))


def _forces_weights_only(function: ast.AST | None) -> bool:
    """``kwargs["weights_only"] = True`` in the function around a ``torch.load(**kwargs)``."""
    for node in ast.walk(function) if function is not None else []:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            target = node.targets[0]
            if (
                isinstance(target, ast.Subscript)
                and isinstance(target.slice, ast.Constant)
                and target.slice.value == "weights_only"
                and node.value.value is True
            ):
                return True
    return False


def _unsafe_loads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bad = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            continue
        flags = [k for k in node.keywords if k.arg == "weights_only"]
        if flags and isinstance(flags[0].value, ast.Constant) and flags[0].value.value is True:
            continue
        function = node
        while function is not None and not isinstance(function, ast.FunctionDef):
            function = parents.get(function)
        if any(k.arg is None for k in node.keywords) and _forces_weights_only(function):
            continue
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_torch_load_is_weights_only() -> None:
    bad = [where for path in SOURCES for where in _unsafe_loads(path)]
    assert not bad, f"torch.load without weights_only=True: {bad}"
    assert any("torch.load" in p.read_text() for p in SOURCES)  # the scan sees the loads


def test_recipes_are_read_with_the_safe_yaml_loader() -> None:
    # yaml.load / unsafe_load / full_load would build Python objects from !!python tags.
    for path in SOURCES:
        text = path.read_text()
        for call in ("yaml.load(", "yaml.unsafe_load(", "yaml.full_load(", "UnsafeLoader"):
            assert call not in text, f"{call} in {path.relative_to(ROOT)}"
    # The recipe reader's own loader (numbers as YAML 1.2 reads them) is a safe loader.
    import yaml

    from lit_unitscale.cli import recipe_check

    assert issubclass(recipe_check._RecipeLoader, yaml.SafeLoader)


def test_export_writes_safetensors() -> None:
    export = (ROOT / "lit_unitscale" / "tools" / "export.py").read_text()
    assert "safetensors" in export and "torch.save(" not in export
