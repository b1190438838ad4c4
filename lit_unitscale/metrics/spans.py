"""Entity-level precision, recall and F1 over BIO tag sequences (the conlleval / seqeval rule)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or len(tag) < 2 or tag[1] != "-" or tag[0] not in "BI":
        return "O", ""
    return tag[0], tag[2:]


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (end inclusive) of a BIO tag sequence.

    As conlleval and seqeval (default, non-strict mode): a span starts at ``B-X``, at ``I-X``
    after ``O`` or after a tag of another type (an I- without B- opens a span), and ends before
    ``O``, ``B-``, or a tag of another type. Tags that are not ``O``/``B-``/``I-`` count as ``O``.

    Args:
        tags: tag strings of one sentence.
    """
    spans: set[tuple[str, int, int]] = set()
    start, current = None, ""
    for i, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if start is not None and (prefix in ("O", "B") or kind != current):
            spans.add((current, start, i - 1))
            start = None
        if start is None and prefix != "O":
            start, current = i, kind
    if start is not None:
        spans.add((current, start, len(tags) - 1))
    return spans


class SpanF1(Metric):
    """Entity-span precision, recall and F1, per entity type and micro-averaged.

    A predicted span counts only if its type, start and end all match a gold span. States are
    per-type true-positive / predicted / gold counts, summed across processes.

    Args:
        types: entity types (e.g. ``["location", "person"]``); spans of other types are ignored.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, types: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.types = list(types)
        self._index = {t: i for i, t in enumerate(self.types)}
        n = len(self.types)
        for name in ("tp", "predicted", "gold"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    @classmethod
    def from_tags(cls, tag_names: Sequence[str], **kwargs) -> SpanF1:
        """A metric over the entity types named by BIO tags (``["O", "B-loc", "I-loc", ...]``).

        Args:
            tag_names: tag vocabulary.
        """
        types = sorted({_split(t)[1] for t in tag_names if _split(t)[0] != "O"})
        return cls(types, **kwargs)

    def update(self, predictions: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]):
        """Add sentences.

        Args:
            predictions: predicted tags, one sequence per sentence.
            targets: gold tags, same lengths.
        """
        n = len(self.types)
        tp, predicted, gold = (torch.zeros(n, dtype=torch.long) for _ in range(3))
        for pred, true in zip(predictions, targets, strict=True):
            if len(pred) != len(true):
                raise ValueError(f"prediction has {len(pred)} tags, target {len(true)}")
            p, g = bio_spans(pred), bio_spans(true)
            for counts, spans in ((tp, p & g), (predicted, p), (gold, g)):
                for kind, _, _ in spans:
                    if kind in self._index:
                        counts[self._index[kind]] += 1
        self.tp += tp.to(self.tp.device)
        self.predicted += predicted.to(self.tp.device)
        self.gold += gold.to(self.tp.device)

    @staticmethod
    def _prf(tp: Tensor, predicted: Tensor, gold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        precision = tp.float() / predicted.clamp_min(1)
        recall = tp.float() / gold.clamp_min(1)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        return precision, recall, f1

    def compute(self) -> dict[str, Tensor]:
        """``precision``, ``recall``, ``f1`` (micro) and ``<type>/precision|recall|f1``."""
        p, r, f = self._prf(self.tp.sum(), self.predicted.sum(), self.gold.sum())
        out = {"precision": p, "recall": r, "f1": f}
        per_p, per_r, per_f = self._prf(self.tp, self.predicted, self.gold)
        for i, kind in enumerate(self.types):
            out[f"{kind}/precision"] = per_p[i]
            out[f"{kind}/recall"] = per_r[i]
            out[f"{kind}/f1"] = per_f[i]
        return out
