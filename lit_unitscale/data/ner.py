"""Named-entity recognition as token classification: WNUT-16 or your own CoNLL files."""

from typing import Literal

import torch
from tokenizers import Tokenizer

from lit_unitscale.data.base import ListDataset, TokenizedDataModule, resolve_tokenizer
from lit_unitscale.data.errors import EmptyDataError
from lit_unitscale.data.labels import bio_names
from lit_unitscale.data.packages import WNUT16, fetch
from lit_unitscale.data.readers import existing_path, read_conll
from lit_unitscale.data.splits import SPLITS, given_split_files, seeded_split
from lit_unitscale.data.text_tokenizers import CLS, SEP, token_id

IGNORE_INDEX = -100
NO_WORD = -1

Sentence = tuple[list[str], list[str]]


def align_labels(
    tokenizer: Tokenizer,
    words: list[str],
    tag_ids: list[int],
    cls_id: int,
    sep_id: int,
    max_len: int,
) -> tuple[list[int], list[int], list[int]]:
    """Sub-word ids, labels and word ids for one sentence: ``[CLS] pieces [SEP]``.

    The first piece of each word carries the word's tag; its other pieces, [CLS] and [SEP]
    carry -100 (not scored). ``word_ids`` gives each piece's word index, -1 for [CLS]/[SEP].
    Pieces past ``max_len`` are cut (their words are then not scored).

    Args:
        tokenizer: the sub-word tokenizer.
        words: the sentence's words.
        tag_ids: the tag id of each word.
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.
        max_len: longest sequence, ``[CLS]`` and ``[SEP]`` included.
    """
    encoding = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    ids = encoding.ids[: max_len - 2]
    word_ids = [NO_WORD if w is None else w for w in encoding.word_ids[: max_len - 2]]
    labels = []
    previous = None
    for word in word_ids:
        labels.append(tag_ids[word] if word != NO_WORD and word != previous else IGNORE_INDEX)
        previous = word
    return (
        [cls_id, *ids, sep_id],
        [IGNORE_INDEX, *labels, IGNORE_INDEX],
        [NO_WORD, *word_ids, NO_WORD],
    )


class TokenCollator:
    """Pads a batch of (ids, (labels, word ids)) to its longest sentence; padded labels are
    -100 and padded word ids -1.

    Args:
        pad_id: id of ``[PAD]``.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], tuple[list[int], list[int]]]]) -> dict:
        width = max(len(ids) for ids, _ in batch)
        shape = (len(batch), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        word_ids = torch.full(shape, NO_WORD, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.bool)
        for row, (ids, (row_labels, row_words)) in enumerate(batch):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids)
            labels[row, :n] = torch.tensor(row_labels)
            word_ids[row, :n] = torch.tensor(row_words)
            attention_mask[row, :n] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "word_ids": word_ids,
        }


class NERData(TokenizedDataModule):
    """Tagged sentences for token classification: WNUT-16 (tweets, 10 entity types, BIO) or
    CoNLL files of your own.

    Only WNUT-16's training file ships, so its 2,394 sentences are split 80/10/10 by the stable
    hash of (split_seed, sentence index). Words are cut into sub-words; the first sub-word of a
    word is labelled with its tag, the rest -100. Batches: ``{"input_ids": [B, T] long,
    "attention_mask": [B, T] bool, "labels": [B, T] long (-100 = not scored), "word_ids": [B, T]
    long (word index in the sentence, -1 for none)}``.
    """

    def __init__(
        self,
        source: str = "wnut16",
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
            source: "wnut16", a CoNLL file (token first, tag last column, blank line between
                sentences, -DOCSTART- lines skipped; split 80/10/10), or a folder with train.*,
                valid.* (or dev.*) and test.* CoNLL files.
            tokenizer: "wordpiece" or "bpe" to train on the training split when no
                ``tokenizer_path`` is given.
            vocab_size: Vocabulary size of the tokenizer to train.
            tokenizer_path: The pretrained encoder's tokenizer.json (fine-tuning); it must
                contain [PAD] [UNK] [CLS] [SEP] [MASK].
            seq_len: Longest sequence in sub-words, [CLS] and [SEP] included.
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
        self._sentences: dict[str, list[Sentence]] = {}

    def _read(self) -> dict[str, list[Sentence]]:
        if self.source == "wnut16":
            return seeded_split(read_conll(fetch(WNUT16) / "ner.txt"), self.split_seed, (0.8, 0.1))
        path = existing_path(self.source, '"wnut16", a CoNLL file or a folder of CoNLL files')
        if path.is_file():
            return seeded_split(read_conll(path), self.split_seed, (0.8, 0.1))
        given = given_split_files(path)
        if given is None:
            raise EmptyDataError(
                f"Data folder {path} has no train.*, valid.* and test.* CoNLL files."
            )
        return {split: read_conll(file) for split, file in given.items()}

    def _prepare(self) -> None:
        self._sentences = self._read()
        self._label_names = bio_names(
            t for s in self._sentences.values() for _, ts in s for t in ts
        )
        self._tokenizer, self._tokenizer_file = resolve_tokenizer(
            self.tokenizer_kind,
            self.requested_vocab_size,
            self.tokenizer_path,
            lambda: [" ".join(words) for words, _ in self._sentences["train"]],
        )
        cls_id, sep_id = token_id(self._tokenizer, CLS), token_id(self._tokenizer, SEP)
        tag_ids = {name: i for i, name in enumerate(self._label_names)}
        for split in SPLITS:
            items = []
            for words, tags in self._sentences[split]:
                ids, labels, word_ids = align_labels(
                    self._tokenizer, words, [tag_ids[t] for t in tags], cls_id, sep_id, self.seq_len
                )
                items.append((ids, (labels, word_ids)))
            self._datasets[split] = ListDataset(items)

    def _collate(self, split: str) -> TokenCollator:
        return TokenCollator(self.pad_id)

    @property
    def sentences(self) -> dict[str, list[Sentence]]:
        """(words, tags) per split, as read."""
        self._ensure_prepared()
        return self._sentences

    @property
    def num_labels(self) -> int:
        """Number of tags."""
        return len(self.label_names)

    @property
    def label_names(self) -> list[str]:
        """Tag names ("O", then B-/I- per entity type); tag i is ``label_names[i]``."""
        self._ensure_prepared()
        return list(self._label_names)
