"""What ``predict`` leaves for a person: one JSON object per input, in the run directory.

Each task turns a batch's predictions into readable rows (decoded text, labels, spans,
phonemes); :class:`WritesPredictions` writes them to ``predictions.jsonl`` under
``trainer.default_root_dir`` (``predictions-rank<r>.jsonl`` per process when several predict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PREDICTIONS_NAME = "predictions.jsonl"


def predictions_path(root: str | Path, rank: int = 0, world_size: int = 1) -> Path:
    """Where a process writes its readable predictions.

    Args:
        root: the run directory.
        rank: this process's rank.
        world_size: number of processes predicting.
    """
    name = PREDICTIONS_NAME if world_size == 1 else f"predictions-rank{rank}.jsonl"
    return Path(root) / name


class WritesPredictions:
    """Task mixin: ``readable(batch, outputs)`` rows are appended to the predictions file as
    each predict batch ends; a new ``predict`` starts the file afresh."""

    def readable(self, batch: dict[str, Any], outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per input of ``batch``.

        Args:
            batch: the predict batch.
            outputs: what ``predict_step`` returned for it.
        """
        raise NotImplementedError

    def _predictions_file(self) -> Path:
        trainer = self.trainer
        return predictions_path(trainer.default_root_dir, trainer.global_rank, trainer.world_size)

    def on_predict_epoch_start(self) -> None:
        path = self._predictions_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def on_predict_batch_end(
        self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int, dataloader_idx=0
    ) -> None:
        with self._predictions_file().open("a") as f:
            for row in self.readable(batch, outputs):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
