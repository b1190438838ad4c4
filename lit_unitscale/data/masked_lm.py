"""BERT-style masked language modelling on running text (encoder-only models)."""

import hashlib
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from .base import TokenizedDataModule, resolve_tokenizer
from .splits import SPLITS
from .text_corpora import text_lines
from .text_tokenizers import CLS, MASK, SEP, SPECIAL_TOKENS, UNK, token_id

IGNORE_INDEX = -100


def stable_seed(*parts: object) -> int:
    """A 63-bit seed fixed by `parts` (Python's hash() changes between processes)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def pack_lines(lines: list[list[int]], budget: int) -> list[list[int]]:
    """Greedily join consecutive lines into sequences of at most `budget` tokens; a line longer
    than `budget` is cut into pieces. Keeps sentences whole where they fit."""
    packed: list[list[int]] = []
    current: list[int] = []
    for ids in lines:
        while len(ids) > budget:
            if current:
                packed.append(current)
                current = []
            packed.append(ids[:budget])
            ids = ids[budget:]
        if current and len(current) + len(ids) > budget:
            packed.append(current)
            current = []
        current = current + ids
    if current:
        packed.append(current)
    return packed


class Sequences(Dataset):
    """Variable-length token sequences stored flat; item i is `(i, ids)`. The index lets the
    collator give each evaluation example its own fixed mask."""

    def __init__(self, sequences: list[list[int]]) -> None:
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        self.flat = torch.tensor([t for s in sequences for t in s], dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index, self.flat[self.offsets[index] : self.offsets[index + 1]].long()


class MaskingCollator:
    """Pads a batch and applies BERT masking (Devlin et al. 2019).

    Each non-special token is chosen with probability `mask_prob`; a chosen token becomes
    `[MASK]` 80 % of the time, a random non-special token 10 %, and stays itself 10 %. Labels hold
    the original token where chosen and -100 elsewhere. Special tokens (pad, unk, cls, sep, mask)
    are never chosen.

    Training masks come from one random stream per process and worker, seeded from `seed` and
    the process rank, so they differ between steps, epochs, ranks and workers but repeat for a
    given seed. With
    `fixed_per_example` (validation, test) example i always gets the same mask, so validation
    losses are comparable across evaluations.

    The rank is given by the main process when the loader is built: a worker started by spawn
    or forkserver (Linux's default from Python 3.14) has no process group to ask.
    """

    def __init__(
        self,
        pad_id: int,
        mask_id: int,
        special_ids: list[int],
        vocab_size: int,
        mask_prob: float,
        seed: int,
        fixed_per_example: bool,
        rank: int = 0,
    ) -> None:
        """
        Args:
            pad_id: Id of the padding token.
            mask_id: Id of [MASK].
            special_ids: Ids never chosen for prediction.
            vocab_size: Size of the vocabulary (random replacements are drawn from it).
            mask_prob: Fraction of non-special tokens chosen.
            seed: Seed of the masks.
            fixed_per_example: Give example i the same mask every time (evaluation).
            rank: Global rank of the process whose loader calls this collator.
        """
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special_ids] = True
        self.replacement_ids = torch.nonzero(~is_special).squeeze(1)
        self.mask_prob = mask_prob
        self.seed = seed
        self.fixed_per_example = fixed_per_example
        self.rank = rank
        self._generator: torch.Generator | None = None

    def _stream(self) -> torch.Generator:
        if self._generator is None:  # created lazily: inside the worker
            # In a worker, its seed comes from the loader's generator (seeded by `seed`, the
            # same on every rank) and differs per worker and per epoch unless workers persist
            # (then the stream goes on); the rank tells the ranks' streams apart.
            worker = get_worker_info()
            seed = stable_seed(worker.seed if worker else self.seed, "train", self.rank)
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    def mask(self, ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(masked input ids, labels) for one sequence."""
        chosen = torch.rand(ids.shape, generator=generator) < self.mask_prob
        chosen &= ~torch.isin(ids, self.special_ids)
        action = torch.rand(ids.shape, generator=generator)
        pick = torch.randint(len(self.replacement_ids), ids.shape, generator=generator)
        inputs = ids.clone()
        inputs[chosen & (action < 0.8)] = self.mask_id
        randomize = chosen & (action >= 0.8) & (action < 0.9)
        inputs[randomize] = self.replacement_ids[pick[randomize]]
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        return inputs, labels

    def __call__(self, batch: list[tuple[int, Tensor]]) -> dict[str, Tensor]:
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (index, ids) in enumerate(batch):
            if self.fixed_per_example:
                generator = torch.Generator().manual_seed(stable_seed(self.seed, "eval", index))
            else:
                generator = self._stream()
            masked, target = self.mask(ids, generator)
            input_ids[row, : len(ids)] = masked
            labels[row, : len(ids)] = target
            attention_mask[row, : len(ids)] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class MaskedLMData(TokenizedDataModule):
    """Masked-LM sequences from Shakespeare, PTB or your own text.

    Consecutive lines are packed into sequences of at most `seq_len` tokens, `[CLS] ... [SEP]`;
    batches are padded to their longest sequence. Batches: `{"input_ids": [B, T] long,
    "attention_mask": [B, T] bool (True = real token), "labels": [B, T] long (-100 = not
    predicted)}`.
    """

    def __init__(
        self,
        corpus: str = "shakespeare+ptb",
        tokenizer: Literal["bpe", "wordpiece"] = "wordpiece",
        vocab_size: int = 8192,
        tokenizer_path: str | None = None,
        seq_len: int = 128,
        mask_prob: float = 0.15,
        batch_size: int = 32,
        max_train_tokens: int | None = None,
        max_eval_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            corpus: "shakespeare+ptb", "shakespeare", "ptb", a text file, or a folder of .txt
                files (with train.txt/valid.txt/test.txt those are the splits; otherwise each
                file is cut 90/5/5 in order).
            tokenizer: "wordpiece" or "bpe" (byte-level), trained on the training split.
            vocab_size: Vocabulary size of the tokenizer to train.
            tokenizer_path: A tokenizer.json to use instead of training one; it must contain
                [PAD] [UNK] [CLS] [SEP] [MASK].
            seq_len: Longest sequence, [CLS] and [SEP] included.
            mask_prob: Fraction of (non-special) tokens chosen for prediction.
            batch_size: Sequences per batch on each process.
            max_train_tokens: Stop after about this many training tokens (tiny runs).
            max_eval_tokens: Stop after about this many validation and test tokens.
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order and of the masks.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be between 0 and 1, got {mask_prob}.")
        if seq_len < 3:
            raise ValueError(f"seq_len must leave room for [CLS], [SEP] and a token: {seq_len}.")
        self.corpus = corpus
        self.tokenizer_kind = tokenizer
        self.requested_vocab_size = vocab_size
        self.tokenizer_path = tokenizer_path
        self.seq_len = seq_len
        self.mask_prob = mask_prob
        self.max_train_tokens = max_train_tokens
        self.max_eval_tokens = max_eval_tokens

    def _prepare(self) -> None:
        # PTB writes out-of-vocabulary words as "<unk>": make it the tokenizer's [UNK] (one
        # special token, never masked) rather than the pieces "<", "unk", ">".
        lines = {
            split: [line.replace("<unk>", UNK) for line in split_lines]
            for split, split_lines in text_lines(self.corpus).items()
        }
        self._tokenizer, self._tokenizer_file = resolve_tokenizer(
            self.tokenizer_kind,
            self.requested_vocab_size,
            self.tokenizer_path,
            lambda: lines["train"],
        )
        cls_id, sep_id = token_id(self._tokenizer, CLS), token_id(self._tokenizer, SEP)
        for split in SPLITS:
            limit = self.max_train_tokens if split == "train" else self.max_eval_tokens
            encoded, total = [], 0
            for encoding in self._tokenizer.encode_batch(lines[split], add_special_tokens=False):
                encoded.append(encoding.ids)
                total += len(encoding.ids)
                if limit is not None and total >= limit:
                    break
            packed = pack_lines(encoded, self.seq_len - 2)
            self._datasets[split] = Sequences([[cls_id, *ids, sep_id] for ids in packed])

    def _collate(self, split: str) -> MaskingCollator:
        self._ensure_prepared()
        return MaskingCollator(
            pad_id=self.pad_id,
            mask_id=self.mask_id,
            special_ids=[token_id(self._tokenizer, t) for t in SPECIAL_TOKENS],
            vocab_size=self.vocab_size,
            mask_prob=self.mask_prob,
            seed=self.seed,
            fixed_per_example=split != "train",
            rank=self._global_rank(),
        )

    def _global_rank(self) -> int:
        # Read here, in the main process, where the trainer and the process group exist.
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def mask_id(self) -> int:
        """Id of [MASK]."""
        self._ensure_prepared()
        return token_id(self._tokenizer, MASK)
