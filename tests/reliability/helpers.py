"""Test-only callbacks, importable by class_path from recipes run through the real CLI."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import lightning as L
import torch


class LossRecorder(L.Callback):
    """Append ``{"step", "loss"}`` per training step to a JSONL file (fsynced, so a ``kill -9``
    loses nothing already written), optionally sleeping so a test can interrupt mid-run.

    Args:
        path: the JSONL file.
        sleep: seconds to wait after each step.
    """

    def __init__(self, path: str, sleep: float = 0.0) -> None:
        self.path = path
        self.sleep = sleep

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {"step": trainer.global_step, "loss": float(loss)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.sleep:
            time.sleep(self.sleep)


class InjectNaN(L.Callback):
    """Make the first block's output NaN during training step ``step`` only.

    Args:
        step: the global step (0-based) whose forward pass is poisoned.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        block = pl_module.model.blocks()[0]

        def hook(module: Any, args: Any, output: Any) -> Any:
            if pl_module.training and trainer.global_step == self.step:
                return output * torch.tensor(float("nan"))
            return output

        block.register_forward_hook(hook)
