"""Evaluation metrics as torchmetrics ``Metric`` objects (summed states, synced across ranks)."""

from lit_unitscale.metrics.edit import G2PErrorRates, edit_distance
from lit_unitscale.metrics.spans import SpanF1, bio_spans

__all__ = ["G2PErrorRates", "SpanF1", "bio_spans", "edit_distance"]
