"""The README's "How it is built" tables match the tree: every package folder has its row, every
row names a path that exists, every class in the model-kinds table imports from the layer named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_unitscale"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(section: str, header: str) -> list[list[str]]:
    table = section.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]


def test_layer_table_lists_every_folder_and_nothing_else() -> None:
    rows = _rows(_section("How it is built"), "| layer | what it holds |")
    listed = {row[0].strip("`").rstrip("/") for row in rows}
    folders = {
        f"lit_unitscale/{p.name}"
        for p in PACKAGE.iterdir()
        if p.is_dir() and (p / "__init__.py").exists()
    }
    assert folders <= listed, f"folders missing from the README table: {folders - listed}"
    for path in listed:
        assert (ROOT / path).exists(), f"README table names {path}, which does not exist"


def test_model_kinds_table_names_importable_classes_and_real_recipe_folders() -> None:
    rows = _rows(_section("How it is built"), "| kind | backbone | model | task | recipes |")
    assert len(rows) == 3
    import lit_unitscale.models as models
    import lit_unitscale.tasks as tasks

    for _kind, backbone, model, task, recipes in rows:
        for module, cell in ((models, backbone), (models, model), (tasks, task)):
            for name in re.findall(r"`(\w+)`", cell):
                assert hasattr(module, name), f"{module.__name__} has no {name}"
        for folder in re.findall(r"`([\w/]+)`", recipes):
            assert list((ROOT / folder).glob("*.yaml")), f"no recipes in {folder}"
    named = {n for row in rows for n in re.findall(r"`(\w+)`", row[2])}
    built = {cls.__name__ for cls in models.ARCHITECTURES.values()}
    assert named == built, "the table's models are the exported architectures"
