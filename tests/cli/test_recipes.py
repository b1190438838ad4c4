"""Every shipped recipe parses (the equivalent of --print_config), alone or as an overlay."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from lit_unitscale.cli import make_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml"))
OVERLAY_DIRS = {"strategy", "precision"}
BASE = ROOT / "recipes" / "decoder" / "ptb-tiny.yaml"


def print_config(*configs: Path, extra: tuple[str, ...] = ()) -> dict:
    args: list[str] = []
    for c in configs:
        args += ["--config", str(c)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        make_cli([*args, *extra, "--print_config"], run=False)
    assert exit_info.value.code in (0, None), out.getvalue()
    text = out.getvalue()
    # Libraries may print warnings before the config (DeepSpeed's accelerator detection).
    start = text.index("# lightning.pytorch==")
    return yaml.safe_load(text[start:])


def test_recipes_exist() -> None:
    kinds = {p.parent.name for p in RECIPES}
    assert {"decoder", "strategy", "precision"} <= kinds, kinds


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses(recipe: Path) -> None:
    if recipe.parent.name in OVERLAY_DIRS:
        config = print_config(BASE, recipe)
    else:
        config = print_config(recipe)
    assert config["model"]["class_path"].startswith("lit_unitscale.tasks.")
    assert config["data"]["class_path"].startswith("lit_unitscale.data.")
    assert config["trainer"]["max_steps"] > 0


def test_later_configs_and_cli_overrides_win_and_interpolation_follows(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_steps: 7\nmodel:\n  init_args:\n    lr: 0.125\n")
    recipe = ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml"
    config = print_config(
        recipe,
        overlay,
        extra=("--trainer.default_root_dir", "elsewhere", "--model.init_args.lr", "0.5"),
    )
    assert config["trainer"]["max_steps"] == 7  # from the overlay
    assert config["model"]["init_args"]["lr"] == 0.5  # CLI beats both files
    # ${trainer.default_root_dir} in the recipe resolves after the override.
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "elsewhere"


def test_model_config_fields_have_help() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        make_cli(["--model.help", "lit_unitscale.tasks.causal_lm.CausalLM"], run=False)
    text = out.getvalue()
    assert "Residual-stream width" in text  # TransformerConfig.d_model's docstring
    assert "peak learning rate" in text  # UnitScaledTask's lr argument
