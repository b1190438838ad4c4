"""The decoder path end to end through ``python -m lit_unitscale``, as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli

RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml")


def test_help_lists_lightning_and_tool_subcommands() -> None:
    out = run_cli("--help").stdout
    for name in ("fit", "validate", "test", "predict", "slurm", "scales", "coord-check", "export"):
        assert name in out


@pytest.mark.slow
def test_fit_resume_validate_test_predict(tmp_path: Path) -> None:
    run = ["--config", RECIPE, "--trainer.default_root_dir", str(tmp_path)]
    run_cli("fit", *run)
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 6
    assert (tmp_path / "config.yaml").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))

    # Resume into the same run directory: continues the step count, no config.yaml clash.
    run_cli("fit", *run, "--trainer.max_steps", "9", "--ckpt_path", "last")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 9
    assert resumed["model_config"] == first["model_config"]
    assert not torch.equal(
        resumed["state_dict"]["model.head.proj.weight"],
        first["state_dict"]["model.head.proj.weight"],
    )

    val = run_cli("validate", *run, "--ckpt_path", str(last)).stdout
    test = run_cli("test", *run, "--ckpt_path", str(last)).stdout
    assert "val/ppl" in val and "test/ppl" in test
    # Perplexity is exp(loss): read both numbers from the printed table.
    rows = dict(
        (line.split("│")[1].strip(), float(line.split("│")[2]))
        for line in test.splitlines()
        if line.count("│") >= 3 and "test/" in line
    )
    assert rows["test/ppl"] == pytest.approx(torch.tensor(rows["test/loss"]).exp().item(), rel=1e-4)
    # After 9 steps on a ~100-word vocabulary the model beats uniform guessing.
    vocab = first["model_config"]["vocab_size"]
    assert rows["test/ppl"] < vocab

    run_cli("predict", *run, "--ckpt_path", str(last))
