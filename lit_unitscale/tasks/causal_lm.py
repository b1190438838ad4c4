"""Causal language modelling (GPT-like decoders)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lit_unitscale.tasks.base import UnitScaledTask
from lit_unitscale.tasks.evaluation import counted_labels


class CausalLM(UnitScaledTask):
    """Next-token prediction with a unit-scaled decoder; reports loss and perplexity per token.

    Batches: ``{"input_ids": (B, T), "labels": (B, T)}`` with labels already shifted.
    """

    architecture = "DecoderLM"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Token-weighted means, so perplexity is exp(total NLL / total tokens) over the split.
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model.loss(self.model(batch["input_ids"]), batch["labels"])
        self.log_train_loss(loss, batch["input_ids"].shape[0])
        return loss

    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        labels = counted_labels(batch)
        tokens = int((labels != -100).sum())
        loss = self.model.loss(self.model(batch["input_ids"]), labels)
        if tokens:
            getattr(self, f"{split}_nll").update(loss.detach(), weight=tokens)

    def log_split(self, split: str) -> None:
        metric = getattr(self, f"{split}_nll")
        nll = metric.compute()
        metrics = {f"{split}/loss": nll, f"{split}/ppl": torch.exp(nll)}
        self.log_dict(metrics, prog_bar=split == "val", sync_dist=False)
        metric.reset()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-sequence mean NLL and the greedy next token after each position."""
        logits = self.model(batch["input_ids"]).float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none"
        )
        mask = (batch["labels"] != -100).float()
        return {
            "nll": (nll * mask).sum(1) / mask.sum(1).clamp_min(1),
            "next_tokens": logits.argmax(-1),
        }

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0
    ) -> Tensor:
        """Sample a continuation (greedy when ``temperature`` is 0).

        Args:
            input_ids: prompt, ``(batch, length)``.
            max_new_tokens: tokens to add.
            temperature: softmax temperature; 0 for greedy.
            top_k: sample among the k most likely tokens (0: all).
        """
        ids = input_ids
        for _ in range(max_new_tokens):
            logits = self.model(ids[:, -self.config.max_seq_len :])[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1)
            ids = torch.cat([ids, nxt], dim=1)
        return ids
