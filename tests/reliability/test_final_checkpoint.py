"""``last.ckpt`` holds the final step even when training ends between two periodic saves."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import run_cli

RECIPE = "tests/fixtures/recipes/decoder-tiny.yaml"  # saves every 3 steps


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_last_checkpoint_is_the_final_step_and_resumes(tmp_path: Path) -> None:
    run = ["--config", RECIPE, "--trainer.default_root_dir", str(tmp_path)]
    run_cli("fit", *run, "--trainer.max_steps", "5")
    checkpoints = tmp_path / "checkpoints"
    assert _step(checkpoints / "last.ckpt") == 5
    assert _step(checkpoints / "epoch=0-step=3.ckpt") == 3
    run_cli("fit", *run, "--trainer.max_steps", "7", "--ckpt_path", "last")
    assert _step(checkpoints / "last.ckpt") == 7
    assert not list(checkpoints.glob("last-v*.ckpt"))  # one run, one last.ckpt
