"""What a task reads from its data module, as typed protocols: the data modules in
:mod:`lit_unitscale.data` provide these attributes, and so must a user's own data module."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class TaskData(Protocol):
    """Every task: sizes the model takes from the data (0 in the recipe means "from the data")
    and the tokenizer, for readable predictions and for the checkpoint."""

    vocab_size: int
    """Input vocabulary size."""
    tokenizer: Any
    """A ``tokenizers.Tokenizer`` (None for data without one)."""
    tokenizer_file: str | Path | None
    """The ``tokenizer.json`` the run trains with, carried in its checkpoints."""


class LabelledData(TaskData, Protocol):
    """Sequence and token classification."""

    num_labels: int
    """Number of classes or tags."""
    label_names: Sequence[str]
    """Class names, or BIO tag names (``B-PER``, ``I-PER``, ``O``) for token classification."""


class Seq2SeqData(TaskData, Protocol):
    """Encoder-decoder tasks: the target side's vocabulary and special tokens; optionally
    ``references(split, index)`` (every accepted output of an example), ``decode_phonemes(ids)``
    and ``words`` (the source words per split) for readable predictions."""

    tgt_vocab_size: int
    """Target vocabulary size."""
    pad_id: int
    """Target padding id."""
    bos_id: int
    """Id the decoder starts from."""
    eos_id: int
    """Id that ends a target sequence."""


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The target side's special ids a decoder needs."""

    pad: int
    """Padding id."""
    bos: int
    """Start id."""
    eos: int
    """End id."""

    @classmethod
    def of(cls, data: Any) -> SpecialTokens | None:
        """The ids ``data`` defines (``pad_id``, ``bos_id``, ``eos_id``), or None.

        Args:
            data: a data module, or a dict saved in a checkpoint.
        """
        get = data.get if isinstance(data, dict) else lambda name: getattr(data, name, None)
        ids = [get(name) for name in ("pad_id", "bos_id", "eos_id")]
        return None if any(i is None for i in ids) else cls(*(int(i) for i in ids))

    def to_dict(self) -> dict[str, int]:
        """The ids under the data modules' attribute names."""
        return {"pad_id": self.pad, "bos_id": self.bos, "eos_id": self.eos}
