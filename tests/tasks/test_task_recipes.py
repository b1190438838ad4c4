"""Every encoder, fine-tuning and encoder-decoder recipe parses and instantiates, and each
fine-tuning recipe loads what its masked-LM recipe writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_unitscale.cli import make_cli
from tests.tasks.conftest import REPO

RECIPES = sorted(
    p.relative_to(REPO)
    for folder in ("encoder", "finetune", "encoder_decoder")
    for p in (REPO / "recipes" / folder).glob("*.yaml")
)
PRETRAINING = {"-tiny": "recipes/encoder/mlm-tiny.yaml", "": "recipes/encoder/mlm-small.yaml"}


def test_every_kind_has_a_recipe_and_a_tiny_one() -> None:
    names = {p.stem for p in RECIPES}
    for name in ("mlm-small", "mr-sentiment", "wnut16-ner", "cmudict-g2p"):
        assert name in names
        assert name.replace("-small", "") + "-tiny" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_instantiates(recipe: Path, tmp_path: Path) -> None:
    run = make_cli(
        ["--config", str(recipe), "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    assert run.model.hparams.lr > 0
    assert run.trainer.max_steps > 0


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.parent.name == "finetune"], ids=str)
def test_finetune_recipe_points_at_its_pretraining_run(recipe: Path) -> None:
    cfg = yaml.safe_load((REPO / recipe).read_text())
    mlm = yaml.safe_load((REPO / PRETRAINING["-tiny" if "tiny" in recipe.stem else ""]).read_text())
    root = mlm["trainer"]["default_root_dir"]
    checkpoint = next(
        c for c in mlm["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")
    )
    assert checkpoint["init_args"]["save_last"] is True
    # The run directory decides where checkpoints go (lit_unitscale.cli.run_dir).
    assert checkpoint["init_args"]["dirpath"] == "${trainer.default_root_dir}/checkpoints"
    assert cfg["model"]["init_args"]["pretrained"] == f"{root}/checkpoints/last.ckpt"
    assert cfg["data"]["init_args"]["tokenizer_path"] == f"{root}/tokenizer.json"
    assert cfg["data"]["init_args"]["seq_len"] <= mlm["model"]["init_args"]["model"]["max_seq_len"]
