"""Former name of :mod:`lit_unitscale.models.architectures`, kept for one release."""

import warnings

from lit_unitscale.models.architectures import (  # noqa: F401
    ARCHITECTURES,
    DecoderLM,
    EncoderMLM,
    Seq2SeqLM,
    SequenceClassifier,
    TokenClassifier,
)

warnings.warn(
    "lit_unitscale.models.heads is now lit_unitscale.models.architectures",
    DeprecationWarning,
    stacklevel=2,
)
