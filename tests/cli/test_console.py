"""A run's console: the start block, a step-based progress bar, none of the noise a user can do
nothing about (a bogus epoch count, an advertisement, wandb's and Lightning's internal warnings,
a FLOPs column of zeros)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

NOISE = [
    "Epoch 0/-2",
    "💡 Tip",
    "litlogger",
    "anonymous setting",
    "git root",
    "LeafSpec",
    "Total FLOPs",
    "srun` command is available",
    "GPU available",
]


def test_console_is_the_summary_and_a_step_bar(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    text = Path("tests/fixtures/recipes/decoder-tiny.yaml").read_text()
    recipe.write_text(
        text.replace("enable_progress_bar: false", "enable_progress_bar: true").replace(
            "  callbacks:\n",
            "  callbacks:\n    - class_path: lit_unitscale.callbacks.StepProgressBar\n",
            1,
        )
    )
    root = tmp_path / "run"
    proc = run_cli("fit", "--config", str(recipe), "--trainer.default_root_dir", str(root))
    out = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in out, noise
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert f"run       {root}" in lines
    model = next(line for line in lines if line.startswith("model "))
    assert "DecoderLM (umup)" in model and "parameters: d_model 32" in model
    batch = next(line for line in lines if line.startswith("batch "))
    assert "tokens per optimizer step" in batch
    numerics = next(line for line in lines if line.startswith("numerics "))
    assert "precision 32-true" in numerics and "6 steps" in numerics
    assert any(line.startswith("logging   W&B offline in") for line in lines)
    assert "step (epoch 0)" in out and "6/6" in out
