"""The run's tokenizer travels inside its checkpoints, so fine-tuning, ``generate`` and
``export`` read the exact vocabulary the weights were trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KEY = "tokenizer"


def store_tokenizer(checkpoint: dict[str, Any], datamodule: Any) -> None:
    """Put the data module's ``tokenizer.json`` text into ``checkpoint`` (once; a value already
    there wins, so a fine-tuning run keeps its pretrained tokenizer).

    Args:
        checkpoint: the dict Lightning is about to save.
        datamodule: the run's data module; its ``tokenizer_file`` names the file, if any.
    """
    path = getattr(datamodule, "tokenizer_file", None)
    if path is not None and KEY not in checkpoint and Path(path).is_file():
        checkpoint[KEY] = Path(path).read_text()


def stored_tokenizer(checkpoint: dict[str, Any]) -> str | None:
    """The ``tokenizer.json`` text a checkpoint carries, or None.

    Args:
        checkpoint: a loaded checkpoint dict.
    """
    return checkpoint.get(KEY)
