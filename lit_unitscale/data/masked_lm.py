"""BERT-style masked language modelling on running text (encoder-only models)."""

import hashlib
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from lit_unitscale.data.prepared_corpora import ShardedTextData
from lit_unitscale.data.shards import ShardTokens
from lit_unitscale.data.text_tokenizers import (
    CLS,
    MASK,
    SEP,
    SPECIAL_TOKENS,
    WORD_UNK,
    token_id,
)

IGNORE_INDEX = -100


def stable_seed(*parts: object) -> int:
    """A 63-bit seed fixed by ``parts`` (Python's ``hash()`` changes between processes).

    Args:
        parts: the values the seed depends on, in order.
    """
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class MaskedBlocks(Dataset):
    """A token stream cut into consecutive pieces of ``body_len`` tokens, each read as
    ``[CLS] piece [SEP]``. The final piece is kept however short, so the blocks of a split
    hold each of its tokens exactly once.

    Args:
        tokens: the token stream.
        body_len: stream tokens per block (the sequence length less ``[CLS]`` and ``[SEP]``).
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.
    """

    def __init__(
        self, tokens: Tensor | ShardTokens, body_len: int, cls_id: int, sep_id: int
    ) -> None:
        self.tokens = tokens
        self.body_len = body_len
        self.cls = torch.tensor([cls_id], dtype=torch.long)
        self.sep = torch.tensor([sep_id], dtype=torch.long)
        self.length = -(-len(tokens) // body_len)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(index)
        start = index * self.body_len
        body = self.tokens[start : start + self.body_len].long()
        return torch.cat([self.cls, body, self.sep])


class NumberedExamples(Dataset):
    """Item i of ``dataset`` as ``(i, item)``: the index lets the collator give each
    evaluation example its own fixed mask.

    Args:
        dataset: a map-style dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, self.dataset[index]


class MaskingCollator:
    """Pads a batch and applies BERT masking (Devlin et al. 2019).

    Each non-special token is chosen with probability ``mask_prob``; a chosen token becomes
    ``[MASK]`` 80 % of the time, a random non-special token 10 %, and stays itself 10 %. Labels hold
    the original token where chosen and -100 elsewhere. Special tokens (pad, unk, cls, sep, mask)
    are never chosen.

    Training masks come from one random stream per process and worker, seeded from ``seed`` and
    the process rank, so they differ between steps, epochs, ranks and workers but repeat for a
    given seed. With
    ``fixed_per_example`` (validation, test) example i always gets the same mask, so validation
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
            # In a worker, its seed comes from the loader's generator (seeded by ``seed``, the
            # same on every rank) and differs per worker and per epoch unless workers persist
            # (then the stream goes on); the rank tells the ranks' streams apart.
            worker = get_worker_info()
            seed = stable_seed(worker.seed if worker else self.seed, "train", self.rank)
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    def mask(self, ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(masked input ids, labels) for one sequence.

        Args:
            ids: the sequence's token ids.
            generator: the random stream the mask is drawn from.
        """
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


class MaskedLMData(ShardedTextData):
    """Masked-LM sequences streamed from token shards: a folder written by
    ``python -m lit_unitscale prepare``, or Shakespeare, PTB or your own text, prepared into
    the cache on first use (the same shards as the causal LM reads).

    The split's token stream is cut into consecutive pieces of ``seq_len - 2`` tokens, each
    ``[CLS] ... [SEP]``; the masks are drawn per batch by :class:`MaskingCollator`, so every
    epoch masks other tokens. PTB's ``<unk>`` is the tokenizer's ``[UNK]`` (never masked).
    Batches are padded to their longest sequence: ``{"input_ids": [B, T] long,
    "attention_mask": [B, T] bool (True = real token), "labels": [B, T] long (-100 = not
    predicted)}``.
    """

    def __init__(
        self,
        corpus: str | list[str] = "shakespeare+ptb",
        tokenizer: Literal["bpe", "wordpiece"] = "wordpiece",
        vocab_size: int = 8192,
        tokenizer_path: str | None = None,
        seq_len: int = 128,
        mask_prob: float = 0.15,
        batch_size: int = 32,
        max_train_tokens: int | None = None,
        max_eval_tokens: int | None = None,
        weights: list[float] | None = None,
        epoch_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            corpus: A folder written by ``prepare``; or "shakespeare+ptb", "shakespeare",
                "ptb", "english-mix", a text file, or a folder of .txt files (with
                train.txt/valid.txt/test.txt those are the splits; otherwise each file is cut
                90/5/5 in order), prepared into the cache on first use. A list mixes several
                corpora sharing one tokenizer (the first one's, unless tokenizer_path is set).
            tokenizer: "wordpiece" or "bpe" (byte-level), trained on the training split.
                Ignored for a prepared folder, which carries its tokenizer.
            vocab_size: Vocabulary size of the tokenizer to train.
            tokenizer_path: A tokenizer.json to use instead of training one; it must contain
                [PAD] [UNK] [CLS] [SEP] [MASK], and a prepared folder must have been written
                with this very file.
            seq_len: Longest sequence, [CLS] and [SEP] included.
            mask_prob: Fraction of (non-special) tokens chosen for prediction.
            batch_size: Sequences per batch on each process.
            max_train_tokens: Keep only the first this many training tokens (tiny runs).
            max_eval_tokens: Keep only the first this many validation and test tokens.
            weights: Mixing weight of each corpus in the list (default: their training sizes).
            epoch_tokens: Training tokens per epoch (default: the training split once; with a
                list, the sum of the training splits); corpora are drawn by weight.
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order and of the masks.
        """
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be between 0 and 1, got {mask_prob}.")
        if seq_len < 3:
            raise ValueError(f"seq_len must leave room for [CLS], [SEP] and a token: {seq_len}.")
        super().__init__(
            corpus=corpus,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            tokenizer_path=tokenizer_path,
            seq_len=seq_len,
            batch_size=batch_size,
            max_train_tokens=max_train_tokens,
            max_eval_tokens=max_eval_tokens,
            weights=weights,
            epoch_tokens=epoch_tokens,
            num_workers=num_workers,
            seed=seed,
        )
        self.mask_prob = mask_prob

    def _prepare(self) -> None:
        # PTB writes out-of-vocabulary words as "<unk>": make it the tokenizer's [UNK] (one
        # special token, never masked) rather than the pieces "<", "unk", ">".
        self._open_corpora(required_tokens=SPECIAL_TOKENS, unk_word=WORD_UNK)
        cls_id, sep_id = token_id(self._tokenizer, CLS), token_id(self._tokenizer, SEP)
        body_len = self.seq_len - 2

        def blocks(stream: ShardTokens, split: str) -> MaskedBlocks:
            return MaskedBlocks(stream, body_len, cls_id, sep_id)

        self._build_splits(blocks, block_tokens=body_len)
        self._datasets = {s: NumberedExamples(d) for s, d in self._datasets.items()}

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
        """Id of ``[MASK]``."""
        self._ensure_prepared()
        return token_id(self._tokenizer, MASK)
