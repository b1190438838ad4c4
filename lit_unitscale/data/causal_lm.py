"""Next-token prediction on running text (decoder-only language models)."""

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from lit_unitscale.errors import RecipeError

from .base import TokenizedDataModule
from .cache import cache_root, file_lock
from .prepare import prepare, resolve_inputs
from .shards import (
    FORMAT_VERSION,
    Manifest,
    MixedBlocks,
    ShardError,
    ShardTokens,
    check_tokenizer,
    is_prepared,
    read_manifest,
    sha256_file,
    split_tokens,
)
from .splits import SPLITS
from .text_corpora import NAMED_TEXT_CORPORA
from .text_tokenizers import PAD, WORD_EOS, is_word_level, load_tokenizer, token_id

IGNORE_INDEX = -100


class TokenBlocks(Dataset):
    """A token stream cut into consecutive blocks for next-token prediction.

    Block i holds `tokens[i*T : i*T + T + 1]`: `input_ids` are its first T tokens and `labels`
    its last T (shifted by one). Blocks overlap by one token, so every token after the first is a
    label exactly once. With `keep_tail` the final partial block is kept, padded with `pad_id`
    and labels -100, so evaluation covers the whole split; without it (training) it is dropped.
    """

    def __init__(
        self, tokens: Tensor | ShardTokens, seq_len: int, pad_id: int, keep_tail: bool
    ) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.pad_id = pad_id
        targets = max(len(tokens) - 1, 0)
        full, rest = divmod(targets, seq_len)
        self.length = full + (1 if keep_tail and rest else 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        start = index * self.seq_len
        block = self.tokens[start : start + self.seq_len + 1].long()
        inputs = torch.full((self.seq_len,), self.pad_id, dtype=torch.long)
        labels = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        inputs[: len(block) - 1] = block[:-1]
        labels[: len(block) - 1] = block[1:]
        return {"input_ids": inputs, "labels": labels}


class CausalLMData(TokenizedDataModule):
    """Language-model blocks streamed from token shards: a folder written by
    ``python -m lit_unitscale prepare``, or PTB, Shakespeare or your own text, prepared into the
    cache on first use (the same shards, so small and large runs share one path).

    Each line is tokenized and ended by `<eos>` (word-level; as in Zaremba et al.) or by its line
    break (byte-level BPE encodes "\\n" as a token), and the lines are concatenated. Batches:
    `{"input_ids": [B, T] long, "labels": [B, T] long}`, labels the next tokens, -100 where
    nothing is predicted (only in the padded last block of validation and test).
    """

    def __init__(
        self,
        corpus: str | list[str] = "ptb",
        tokenizer: Literal["word", "bpe"] = "word",
        vocab_size: int | None = None,
        tokenizer_path: str | None = None,
        seq_len: int = 128,
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
            corpus: A folder written by `prepare`; or "ptb", "shakespeare", "shakespeare+ptb",
                "english-mix", a text file, or a folder of .txt files (with
                train.txt/valid.txt/test.txt those are the splits; otherwise each file is cut
                90/5/5 in order), prepared into the cache on first use. A list mixes several
                corpora sharing one tokenizer (the first one's, unless tokenizer_path is set).
            tokenizer: "word" (whitespace words; on PTB exactly its 10,000-word vocabulary) or
                "bpe" (byte-level BPE trained on the training split). Ignored for a prepared
                folder, which carries its tokenizer.
            vocab_size: Vocabulary size. word: keep the most frequent words (default: all
                training words); bpe: size to train (default 8192).
            tokenizer_path: A tokenizer.json to use instead of training one (e.g. from a
                pretraining run); a prepared folder must have been written with this very file.
                Lines end with `<eos>` if it is word-level, else with the tokens of a line break.
            seq_len: Tokens per example (T).
            batch_size: Examples per batch on each process.
            max_train_tokens: Keep only the first this many training tokens (tiny runs).
            max_eval_tokens: Keep only the first this many validation and test tokens.
            weights: Mixing weight of each corpus in the list (default: their training sizes).
            epoch_tokens: Training tokens per epoch (default: the training split once; with a
                list, the sum of the training splits); corpora are drawn by weight.
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        corpora = [corpus] if isinstance(corpus, str) else list(corpus)
        if not corpora:
            raise RecipeError("data: corpus is an empty list; name at least one corpus")
        if weights is not None and (
            len(weights) != len(corpora) or min(weights) < 0 or sum(weights) <= 0
        ):
            raise RecipeError(
                f"data: weights must be one non-negative number per corpus ({len(corpora)}), "
                f"not all zero; got {weights}"
            )
        if epoch_tokens is not None and epoch_tokens < seq_len:
            raise RecipeError(
                f"data: epoch_tokens must be >= seq_len ({seq_len}), got {epoch_tokens}"
            )
        self.corpus = corpus
        self.corpora = corpora
        self.tokenizer_kind = tokenizer
        self.requested_vocab_size = vocab_size
        self.tokenizer_path = tokenizer_path
        self.seq_len = seq_len
        self.max_train_tokens = max_train_tokens
        self.max_eval_tokens = max_eval_tokens
        self.weights = weights
        self.epoch_tokens = epoch_tokens
        self._tokens: dict[str, ShardTokens] = {}
        self.manifests: list[Manifest] = []

    def _corpus_manifest(self, corpus: str, tokenizer: str) -> Manifest:
        """The manifest of `corpus`: a prepared folder as it is, else its cache entry, prepared
        under a lock on first use (every DDP rank may call this; one prepares)."""
        path = Path(corpus).expanduser()
        if is_prepared(path):
            return read_manifest(path)
        if (path / ".work").is_dir():
            raise ShardError(
                f"{path} is an unfinished prepare (no manifest.json); run the same "
                "`python -m lit_unitscale prepare` again to finish it."
            )
        if corpus in NAMED_TEXT_CORPORA:
            identity: object = corpus
        else:  # a raw path: its files by name, size and time (hashing them is prepare's job)
            files = [p for p, _ in resolve_inputs([corpus])]
            identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        spec = tokenizer if tokenizer in ("word", "bpe") else sha256_file(Path(tokenizer))
        key = json.dumps([FORMAT_VERSION, identity, spec, self.requested_vocab_size])
        name = Path(corpus).name.replace("+", "-")[:40] or "corpus"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        folder = cache_root() / "prepared" / f"{name}-{digest}"
        if not is_prepared(folder):
            with file_lock(folder):
                if not is_prepared(folder):
                    vocab = self.requested_vocab_size
                    prepare([corpus], folder, tokenizer, vocab, workers=1, progress=False)
        return read_manifest(folder)

    def _prepare(self) -> None:
        spec = self.tokenizer_path or self.tokenizer_kind
        manifests = []
        for corpus in self.corpora:
            manifests.append(self._corpus_manifest(corpus, spec))
            spec = str(manifests[0].tokenizer_file)  # every corpus of a mix: one vocabulary
        first = manifests[0]
        for corpus, manifest in zip(self.corpora, manifests, strict=True):
            if self.tokenizer_path is not None:
                check_tokenizer(manifest, self.tokenizer_path)
            elif manifest.tokenizer_sha256 != first.tokenizer_sha256:
                raise RecipeError(
                    f"data: corpus {corpus} was prepared with another tokenizer than "
                    f"{self.corpora[0]}; prepare it with --tokenizer {first.tokenizer_file}"
                )
        self.manifests = manifests
        self._tokenizer_file = first.tokenizer_file
        self._tokenizer = load_tokenizer(self._tokenizer_file)
        word_level = is_word_level(self._tokenizer)
        self.eos_id = token_id(self._tokenizer, WORD_EOS) if word_level else None
        pad = self._tokenizer.token_to_id(PAD)
        # Word-level vocabularies have no [PAD] (PTB must stay at exactly 10,000 words); blocks
        # are padded only at the end of evaluation splits, where labels are -100 anyway.
        self.pad_id_ = pad if pad is not None else self.eos_id if self.eos_id is not None else 0
        vocab = self._tokenizer.get_vocab_size()
        for split in SPLITS:
            limit = self.max_train_tokens if split == "train" else self.max_eval_tokens
            streams = [split_tokens(m, split, vocab, limit) for m in manifests]
            self._tokens[split] = streams[0]
            blocks = [
                TokenBlocks(s, self.seq_len, self.pad_id_, keep_tail=split != "train")
                for s in streams
            ]
            if split != "train":
                self._datasets[split] = blocks[0] if len(blocks) == 1 else ConcatDataset(blocks)
            elif len(blocks) == 1 and self.epoch_tokens is None:
                self._datasets[split] = blocks[0]
            else:
                self._datasets[split] = self._mix(blocks)

    def _mix(self, blocks: list[TokenBlocks]) -> MixedBlocks:
        for corpus, b in zip(self.corpora, blocks, strict=True):
            if len(b) == 0:
                raise RecipeError(
                    f"data: corpus {corpus} has no training block of seq_len {self.seq_len}"
                )
        sizes = [len(b) for b in blocks]
        length = self.epoch_tokens // self.seq_len if self.epoch_tokens else sum(sizes)
        return MixedBlocks(blocks, self.weights or [float(n) for n in sizes], length)

    @property
    def tokens(self) -> dict[str, ShardTokens]:
        """Token ids per split ("train", "valid", "test"), lines joined, after any limit (of the
        first corpus of a mix): ``len()`` and slices of a memory-mapped stream."""
        self._ensure_prepared()
        return self._tokens

    @property
    def pad_id(self) -> int:
        """Id used to pad the last evaluation block (`[PAD]`, or `<eos>` for word-level)."""
        self._ensure_prepared()
        return self.pad_id_
