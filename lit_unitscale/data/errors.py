"""Errors the data layer raises for users: each message is one sentence naming the path or
package and what was expected, so a failing recipe says what to fix."""

from lit_unitscale.errors import LitUnitscaleError


class DataError(LitUnitscaleError):
    """Base class of every error raised by ``lit_unitscale.data``."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A path given for data (or a file expected inside it) does not exist."""


class EmptyDataError(DataError, ValueError):
    """A data file or folder exists but holds nothing usable."""


class DataFormatError(DataError, ValueError):
    """A data file does not have the expected layout (TSV, CoNLL, dictionary lines)."""


class DataHashError(DataError, ValueError):
    """A downloaded archive does not have the sha256 recorded in the code."""


class FetchError(DataError, RuntimeError):
    """pip could not download a package that ships a corpus."""


class TokenizerFileError(DataError, ValueError):
    """A tokenizer.json is missing, unreadable, or lacks the special tokens we need."""
