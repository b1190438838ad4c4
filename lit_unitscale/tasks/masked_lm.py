"""Masked language modelling (BERT-like encoders): the pretraining that fine-tuning loads."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import Tensor
from torchmetrics import MeanMetric, Metric

from lit_unitscale.tasks.base import UnitScaledTask
from lit_unitscale.tasks.evaluation import counted_labels
from lit_unitscale.tasks.predictions import WritesPredictions

TOP_FILLS = 3


class MaskedLM(WritesPredictions, UnitScaledTask):
    """Predict masked tokens with a unit-scaled encoder; reports loss, perplexity and accuracy
    over the masked positions.

    Batches: ``{"input_ids", "attention_mask", "labels"}`` (labels -100 where not masked). The
    run's ``tokenizer.json`` is copied to the trainer's ``default_root_dir`` and carried in
    checkpoints, so fine-tuning recipes point their data at it.
    """

    architecture = "EncoderMLM"
    prog_bar_metrics = ("loss", "ppl", "acc")
    reports_perplexity = True

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        # Accuracy (a full-vocabulary argmax) and token counts are evaluation-only: training
        # steps read nothing back to the host.
        return self.model.loss(
            self.model(batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )

    def split_metrics(self) -> dict[str, Metric]:
        return {"loss": MeanMetric(), "acc": MeanMetric()}

    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        labels = counted_labels(batch)
        loss = self.model.loss(logits, labels)
        masked = labels != -100
        tokens = int(masked.sum())
        if tokens:
            accuracy = ((logits.argmax(-1) == labels) & masked).sum().float() / tokens
            self.metric(split, "loss").update(loss.detach(), weight=tokens)
            self.metric(split, "acc").update(accuracy, weight=tokens)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The most likely token at every position, and the labels it is scored against."""
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        top = logits.topk(min(TOP_FILLS, logits.shape[-1]), dim=-1).indices
        return {"predictions": logits.argmax(-1), "labels": batch["labels"], "top": top}

    def readable(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> list[dict]:
        """The masked text and, per masked position, the most likely fills beside the answer."""
        tokenizer = self.tokenizer
        token = tokenizer.id_to_token if tokenizer is not None else str
        rows = []
        for ids, mask, labels, top in zip(
            batch["input_ids"].tolist(),
            batch["attention_mask"].tolist(),
            batch["labels"].tolist(),
            outputs["top"].tolist(),
            strict=True,
        ):
            n = sum(mask)
            fills = [
                {"position": i, "answer": token(labels[i]), "top": [token(t) for t in top[i]]}
                for i in range(n)
                if labels[i] != -100
            ]
            rows.append({"text": " ".join(token(t) for t in ids[:n]), "fills": fills})
        return rows

    # The run directory gets the tokenizer.json fine-tuning recipes point their data at.
    def on_fit_start(self) -> None:
        path = getattr(self.datamodule, "tokenizer_file", None)
        if path is not None and Path(path).is_file() and self.trainer.is_global_zero:
            root = Path(self.trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, root / "tokenizer.json")
