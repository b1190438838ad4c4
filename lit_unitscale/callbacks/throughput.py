"""Tokens per second and step time, logged as ``perf/tokens_per_s`` and ``perf/step_time_s``."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class Throughput(L.Callback):
    """Measure training throughput from the batches themselves (no model knowledge needed).

    Tokens are counted as the elements of ``batch[token_key]`` on this process times the world
    size (every data-parallel rank sees a batch of the same shape).

    Args:
        token_key: batch key whose element count is the number of tokens.
        log_every_n_steps: log every N optimizer steps (the average since the last log).
    """

    def __init__(self, token_key: str = "input_ids", log_every_n_steps: int = 10) -> None:
        self.token_key = token_key
        self.every = max(1, log_every_n_steps)
        self._t0: float | None = None
        self._tokens = 0
        self._steps = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        tokens = batch.get(self.token_key) if isinstance(batch, dict) else None
        if tokens is not None:
            self._tokens += tokens.numel() * trainer.world_size
        self._steps += 1
        if self._steps % self.every == 0 and self._t0 is not None:
            elapsed = time.perf_counter() - self._t0
            pl_module.log_dict(
                {
                    "perf/tokens_per_s": self._tokens / elapsed,
                    "perf/step_time_s": elapsed / self.every,
                },
                prog_bar=False,
                batch_size=1,
            )
            self._t0, self._tokens = time.perf_counter(), 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation between epochs is not training time.
        self._t0, self._tokens, self._steps = None, 0, 0
