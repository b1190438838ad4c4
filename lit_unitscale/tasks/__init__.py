"""Thin LightningModules, one per kind of training: each owns a model from
:mod:`lit_unitscale.models`, its loss, metrics per split and decoding."""

from lit_unitscale.tasks.base import UnitScaledTask
from lit_unitscale.tasks.causal_lm import CausalLM
from lit_unitscale.tasks.classification import SequenceClassification, TokenClassification
from lit_unitscale.tasks.masked_lm import MaskedLM
from lit_unitscale.tasks.seq2seq import Seq2Seq

__all__ = [
    "CausalLM",
    "MaskedLM",
    "Seq2Seq",
    "SequenceClassification",
    "TokenClassification",
    "UnitScaledTask",
]
