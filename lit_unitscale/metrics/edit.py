"""Edit distance, and word / phoneme error rates against several reference pronunciations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: fewest insertions, deletions and substitutions turning a into b.

    Args:
        a: first sequence (any comparable items).
        b: second sequence.
    """
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class G2PErrorRates(Metric):
    """Word error rate and phoneme error rate of predicted pronunciations.

    A word is correct when its prediction equals ANY of its references. Its phoneme errors are
    the edit distance to the closest reference, counted against that reference's length (ties:
    the shorter reference), so PER = total edits / total reference phonemes. Both rates are
    fractions in [0, 1] (PER may exceed 1 for very long predictions).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("word_errors", "words", "phoneme_errors", "phonemes"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[Sequence], references: Sequence[Sequence[Sequence]]):
        """Add a batch.

        Args:
            predictions: one predicted symbol sequence per word.
            references: per word, its list of reference symbol sequences (at least one).
        """
        word_errors = phoneme_errors = phonemes = 0
        for pred, refs in zip(predictions, references, strict=True):
            if not refs:
                raise ValueError("every word needs at least one reference pronunciation")
            pred = list(pred)
            dist, length = min((edit_distance(pred, list(r)), len(r)) for r in refs)
            word_errors += dist != 0
            phoneme_errors += dist
            phonemes += length
        self.word_errors += word_errors
        self.words += len(predictions)
        self.phoneme_errors += phoneme_errors
        self.phonemes += phonemes

    def compute(self) -> dict[str, Tensor]:
        return {
            "wer": self.word_errors.float() / self.words.clamp_min(1),
            "per": self.phoneme_errors.float() / self.phonemes.clamp_min(1),
        }
