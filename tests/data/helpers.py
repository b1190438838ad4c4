"""Test-only callbacks, importable by class_path from recipes run through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import lightning as L


def row_hash(ids: Any) -> str:
    """A short hash of one example's input ids."""
    return hashlib.sha256(ids.cpu().numpy().astype("int64").tobytes()).hexdigest()[:16]


class BatchHashRecorder(L.Callback):
    """Append ``{"step", "rank", "rows"}`` per training micro-batch (rows: hashes of each
    example's input ids) to ``<path>.<rank>`` (fsynced, so ``kill -9`` loses nothing written).

    Args:
        path: the JSONL file stem.
        sleep: seconds to wait after each step, so a test can interrupt mid-run.
    """

    def __init__(self, path: str, sleep: float = 0.0) -> None:
        self.path = path
        self.sleep = sleep

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        rows = [row_hash(row) for row in batch["input_ids"]]
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "rows": rows}
        with open(f"{self.path}.{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_train_batch_end(self, *args: Any) -> None:
        if self.sleep:
            time.sleep(self.sleep)
