"""What the optimizer keys mean, and the global batch the weight-gradient scales count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from lit_unitscale.errors import RecipeError
from lit_unitscale.models import TransformerConfig
from lit_unitscale.tasks.causal_lm import CausalLM
from lit_unitscale.unit import global_batch, param_groups
from tests.conftest import run_cli
from tests.tasks.conftest import cli


def test_torch_style_weight_decay_is_refused_under_umup():
    config = TransformerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(RecipeError, match=r"10\.0 % every step"):
        CausalLM(config, weight_decay=0.1)
    CausalLM(config, weight_decay=1e-4)  # the per-step meaning: fine
    CausalLM(config, weight_decay=0.1, independent_weight_decay=False)  # torch's meaning
    sp = TransformerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, parametrization="sp")
    task = CausalLM(sp, weight_decay=0.1)
    task.model = task.build_model()
    # SP keeps torch AdamW's coupled meaning: the value reaches torch unchanged.
    decays = {g["weight_decay"] for g in param_groups(task.model, 1e-3, 0.1, "sp")}
    assert decays == {0.1}


def test_weight_decay_error_is_one_line_from_the_cli(tmp_path: Path):
    proc = run_cli(
        "fit",
        "--config",
        "tests/tasks/configs/trainer.yaml",
        "--config",
        "recipes/decoder/ptb-tiny.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.init_args.weight_decay",
        "0.1",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "weight_decay" in line]
    assert (
        lines
        and "model.init_args.weight_decay on the command line: weight_decay=0.1 under" in lines[0]
    )
    assert not (tmp_path / "checkpoints").exists()


class RecordFactor(L.Callback):
    """Records (epoch, weight-gradient factor) after every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, global_batch.grad_factor()))


def test_global_batch_follows_an_accumulation_schedule(tmp_path: Path):
    """k = 1 in epoch 0 and 4 from epoch 1 (Lightning's GradientAccumulationScheduler): the
    weight-gradient factor sqrt(world_size * k) follows, 1 then 2."""
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.GradientAccumulationScheduler\n"
        "      init_args: {scheduling: {0: 1, 1: 4}}\n"
        "    - class_path: tests.tasks.test_optimization.RecordFactor\n"
    )
    run = cli(
        "fit",
        "mlm",
        tmp_path / "run",
        "--config",
        str(callbacks),
        "--trainer.max_steps",
        "-1",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "0",
    )
    (record,) = [c for c in run.trainer.callbacks if isinstance(c, RecordFactor)]
    assert record.seen == [(0, 1.0)] * 4 + [(1, 2.0)] * 4
