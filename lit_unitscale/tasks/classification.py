"""Sequence classification (sentiment) and token classification (NER) on a unit-scaled encoder,
from scratch or fine-tuned from a masked-LM checkpoint (see :mod:`.finetune`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lit_unitscale.data.base import COUNTED
from lit_unitscale.metrics import SpanF1
from lit_unitscale.metrics.spans import bio_spans
from lit_unitscale.tasks.evaluation import counted_labels, counted_rows
from lit_unitscale.tasks.finetune import EncoderTask
from lit_unitscale.tasks.predictions import WritesPredictions


class SequenceClassification(WritesPredictions, EncoderTask):
    """One label per sequence; reports loss, accuracy and macro F1.

    Batches: ``{"input_ids", "attention_mask", "labels": (B,)}``.
    """

    architecture = "SequenceClassifier"
    prog_bar_metrics = ("loss", "acc", "f1")

    def split_metrics(self) -> dict[str, Metric]:
        n = self.config.num_labels
        return {
            "loss": MeanMetric(),
            "acc": MulticlassAccuracy(n, average="micro"),
            "f1": MulticlassF1Score(n, average="macro"),
        }

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        return self.model.loss(logits, batch["labels"])

    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        if COUNTED in batch:  # skip the examples repeated to even out processes
            logits, labels = logits[batch[COUNTED]], labels[batch[COUNTED]]
            if not len(labels):
                return
        self.metric(split, "loss").update(self.model.loss(logits, labels), len(labels))
        preds = logits.argmax(-1)
        self.metric(split, "acc").update(preds, labels)
        self.metric(split, "f1").update(preds, labels)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Predicted class ids and probabilities (and label names when the data has them)."""
        probs = self.model(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
        out: dict[str, Any] = {"predictions": probs.argmax(-1), "probabilities": probs}
        names = self._label_names()
        if names is not None:
            out["labels"] = [names[i] for i in out["predictions"].tolist()]
        return out

    def readable(self, batch: dict[str, Tensor], outputs: dict[str, Any]) -> list[dict]:
        """The text, its predicted label and that label's probability."""
        tokenizer = self.tokenizer
        names = outputs.get("labels") or [str(i) for i in outputs["predictions"].tolist()]
        rows = []
        for ids, mask, label, probs in zip(
            batch["input_ids"].tolist(),
            batch["attention_mask"].tolist(),
            names,
            outputs["probabilities"].max(-1).values.tolist(),
            strict=True,
        ):
            ids = ids[: sum(mask)]
            text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
            rows.append({"text": text, "label": label, "probability": round(probs, 4)})
        return rows

    def _label_names(self) -> list[str] | None:
        return getattr(self.datamodule, "label_names", None)


class TokenClassification(WritesPredictions, EncoderTask):
    """One tag per word (the first sub-word carries it); reports loss and seqeval-style
    entity-span precision/recall/F1 (micro and per type) from the data's BIO tag names.

    Batches: ``{"input_ids", "attention_mask", "labels": (B, T)}`` with -100 on sub-words that
    are not scored.
    """

    architecture = "TokenClassifier"
    prog_bar_metrics = ("f1",)

    def split_metrics(self) -> dict[str, Metric]:
        # SpanF1 logs precision, recall and f1, micro and per entity type.
        return {"loss": MeanMetric(), "spans": SpanF1.from_tags(self._tag_names())}

    def _tag_names(self) -> list[str]:
        names = getattr(self.datamodule, "label_names", None)
        if names is None:  # no data module: tags by index, no entity types
            names = [str(i) for i in range(self.config.num_labels)]
        return list(names)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        return self.model.loss(logits, batch["labels"])

    def _word_tags(self, preds: Tensor, labels: Tensor) -> tuple[list, list]:
        names = self._tag_names()
        pred_tags, gold_tags = [], []
        for p_row, l_row in zip(preds.tolist(), labels.tolist(), strict=True):
            scored = [(p, g) for p, g in zip(p_row, l_row, strict=True) if g != -100]
            pred_tags.append([names[p] for p, _ in scored])
            gold_tags.append([names[g] for _, g in scored])
        return pred_tags, gold_tags

    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        labels = counted_labels(batch)
        tokens = int((labels != -100).sum())
        if tokens:
            self.metric(split, "loss").update(self.model.loss(logits, labels), tokens)
        pred_tags, gold_tags = self._word_tags(logits.argmax(-1), labels)
        self.metric(split, "spans").update(
            counted_rows(batch, pred_tags), counted_rows(batch, gold_tags)
        )

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Predicted tag names per scored word, beside the gold tags."""
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        pred_tags, gold_tags = self._word_tags(logits.argmax(-1), batch["labels"])
        return {"tags": pred_tags, "gold": gold_tags}

    def readable(self, batch: dict[str, Tensor], outputs: dict[str, Any]) -> list[dict]:
        """The words (each from its sub-words), their tags and the entity spans they form."""
        tokenizer = self.tokenizer
        rows = []
        for ids, mask, labels, tags in zip(
            batch["input_ids"].tolist(),
            batch["attention_mask"].tolist(),
            batch["labels"].tolist(),
            outputs["tags"],
            strict=True,
        ):
            # A word is its scored first sub-word and the unscored ones up to the next word or
            # the closing [SEP] (the last real token).
            starts = [i for i, label in enumerate(labels) if label != -100]
            ends = [*starts[1:], sum(mask) - 1]
            words = [
                tokenizer.decode(ids[a:b]).replace(" ", "") if tokenizer else str(ids[a])
                for a, b in zip(starts, ends, strict=True)
            ]
            spans = [
                {"type": kind, "text": " ".join(words[a : b + 1]), "start": a, "end": b + 1}
                for kind, a, b in sorted(bio_spans(tags), key=lambda s: s[1])
            ]
            rows.append({"words": words, "tags": tags, "spans": spans})
        return rows


# The task classes' names until this release (recipes' class_path); the models keep theirs.
SequenceClassifier = SequenceClassification
TokenClassifier = TokenClassification
