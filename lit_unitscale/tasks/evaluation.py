"""Evaluation metrics that count each example once under several processes.

The evaluation sampler repeats a few examples so that every process runs as many batches; such
batches carry ``counted`` flags (see :class:`lit_unitscale.data.base.EvalSampler`). The model
still runs on the repeats (sharded forwards are collectives), and the metrics skip them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from torch import Tensor

from lit_unitscale.data.base import COUNTED

T = TypeVar("T")


def counted_labels(batch: dict[str, Any], ignore_index: int = -100) -> Tensor:
    """The batch's ``labels`` with every position of a repeated example set to ``ignore_index``.

    Args:
        batch: an evaluation batch (``labels`` first dimension = examples).
        ignore_index: the label a loss and the metrics skip.
    """
    labels = batch["labels"]
    counted = batch.get(COUNTED)
    if counted is None:
        return labels
    shape = (-1,) + (1,) * (labels.dim() - 1)
    return labels.masked_fill(~counted.view(shape), ignore_index)


def counted_rows(batch: dict[str, Any], rows: Sequence[T]) -> list[T]:
    """The entries of ``rows`` (one per example of ``batch``) that are not repeats.

    Args:
        batch: an evaluation batch.
        rows: per-example values, in batch order.
    """
    counted = batch.get(COUNTED)
    if counted is None:
        return list(rows)
    return [row for row, keep in zip(rows, counted.tolist(), strict=True) if keep]
