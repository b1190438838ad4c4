"""Transformers built from unit-scaled parts: single-device, no Lightning, no parallelism."""

from lit_unitscale.models.architectures import (
    ARCHITECTURES,
    DecoderLM,
    EncoderMLM,
    Seq2SeqLM,
    SequenceClassifier,
    TokenClassifier,
    TransformerModel,
)
from lit_unitscale.models.config import ConfigError, TransformerConfig
from lit_unitscale.models.io import load, save_pretrained
from lit_unitscale.models.stack import Block, TransformerStack
from lit_unitscale.models.transformer import Decoder, Encoder, EncoderDecoder

__all__ = [
    "ARCHITECTURES",
    "Block",
    "ConfigError",
    "Decoder",
    "DecoderLM",
    "Encoder",
    "EncoderDecoder",
    "EncoderMLM",
    "Seq2SeqLM",
    "SequenceClassifier",
    "TokenClassifier",
    "TransformerConfig",
    "TransformerModel",
    "TransformerStack",
    "load",
    "save_pretrained",
]
