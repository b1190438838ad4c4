"""Next-token prediction on running text (decoder-only language models)."""

from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_unitscale.data.prepared_corpora import ShardedTextData
from lit_unitscale.data.shards import ShardTokens
from lit_unitscale.data.text_tokenizers import PAD, WORD_EOS, is_word_level, token_id

IGNORE_INDEX = -100


class TokenBlocks(Dataset):
    """A token stream cut into consecutive blocks for next-token prediction.

    Block i holds ``tokens[i*T : i*T + T + 1]``: ``input_ids`` are its first T tokens and
    ``labels`` its last T (shifted by one). Blocks overlap by one token, so every token after
    the first is a label exactly once. With ``keep_tail`` the final partial block is kept,
    padded with ``pad_id`` and labels -100, so evaluation covers the whole split; without it
    (training) it is dropped.

    Args:
        tokens: the token stream.
        seq_len: tokens per block (T).
        pad_id: id that fills the padded final block.
        keep_tail: keep the final partial block.
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


class CausalLMData(ShardedTextData):
    """Language-model blocks streamed from token shards: a folder written by
    ``python -m lit_unitscale prepare``, or PTB, Shakespeare or your own text, prepared into the
    cache on first use (the same shards, so small and large runs share one path).

    Each line is tokenized and ended by ``<eos>`` (word-level; as in Zaremba et al.) or by its
    line break (byte-level BPE encodes "\\n" as a token), and the lines are concatenated.
    Batches: ``{"input_ids": [B, T] long, "labels": [B, T] long}``, labels the next tokens, -100
    where nothing is predicted (only in the padded last block of validation and test).
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
            corpus: A folder written by ``prepare``; or "ptb", "shakespeare", "shakespeare+ptb",
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
                Lines end with ``<eos>`` if it is word-level, else with the tokens of a line
                break.
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

    def _prepare(self) -> None:
        self._open_corpora()
        word_level = is_word_level(self._tokenizer)
        self.eos_id = token_id(self._tokenizer, WORD_EOS) if word_level else None
        pad = self._tokenizer.token_to_id(PAD)
        # Word-level vocabularies have no [PAD] (PTB must stay at exactly 10,000 words); blocks
        # are padded only at the end of evaluation splits, where labels are -100 anyway.
        fill = pad if pad is not None else self.eos_id if self.eos_id is not None else 0
        self.block_pad_id = fill

        def blocks(stream: ShardTokens, split: str) -> TokenBlocks:
            return TokenBlocks(stream, self.seq_len, fill, keep_tail=split != "train")

        self._build_splits(blocks, block_tokens=self.seq_len)

    @property
    def pad_id(self) -> int:
        """Id used to pad the last evaluation block (``[PAD]``, or ``<eos>`` for word-level)."""
        self._ensure_prepared()
        return self.block_pad_id
