"""What the language-model data modules share: they read only token shards.

A corpus is a folder written by ``python -m lit_unitscale prepare``, or a named corpus or text
path prepared into the cache (``$LIT_UNITSCALE_CACHE/prepared/``) on first use, under a lock, by
one process. Each split is one memory-mapped token stream (:class:`ShardTokens`); a subclass
cuts it into the examples of its task. Several corpora sharing one tokenizer are mixed by
weight, and the training split may be given a length in tokens. The datasets are map-style, so
``ResumableSampling`` deals disjoint examples to the ranks and resumes mid-epoch.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from lit_unitscale.data.base import TokenizedDataModule
from lit_unitscale.data.cache import cache_root, file_lock
from lit_unitscale.data.prepare import TRAINED_TOKENIZERS, prepare, resolve_inputs
from lit_unitscale.data.shards import (
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
from lit_unitscale.data.splits import SPLITS
from lit_unitscale.data.text_corpora import NAMED_TEXT_CORPORA
from lit_unitscale.data.text_tokenizers import load_tokenizer
from lit_unitscale.errors import RecipeError


def corpus_manifest(
    corpus: str, tokenizer: str, vocab_size: int | None, unk_word: str | None = None
) -> Manifest:
    """The manifest of ``corpus``: a prepared folder as it is, else its cache entry, prepared
    under a lock on first use (every DDP rank may call this; one prepares).

    Args:
        corpus: a prepared folder, a named corpus, a text file or a folder of text files.
        tokenizer: a kind trained on the training split ("word", "bpe", "wordpiece") or a
            tokenizer.json.
        vocab_size: vocabulary size to train (None: the kind's default).
        unk_word: a word the text writes for unknown words, encoded as ``[UNK]``.
    """
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
    spec = tokenizer if tokenizer in TRAINED_TOKENIZERS else sha256_file(Path(tokenizer))
    # unk_word joins the key only when set, so the entries prepared without it stay valid.
    key_parts = [FORMAT_VERSION, identity, spec, vocab_size]
    key = json.dumps(key_parts if unk_word is None else [*key_parts, unk_word])
    name = Path(corpus).name.replace("+", "-")[:40] or "corpus"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_root() / "prepared" / f"{name}-{digest}"
    if not is_prepared(folder):
        with file_lock(folder):
            if not is_prepared(folder):
                prepare(
                    [corpus],
                    folder,
                    tokenizer,
                    vocab_size,
                    workers=1,
                    unk_word=unk_word,
                    progress=False,
                )
    return read_manifest(folder)


class ShardedTextData(TokenizedDataModule):
    """Token shards of one corpus or a weighted mix, cut into examples by a subclass.

    A subclass's ``_prepare`` calls :meth:`_open_corpora`, reads the ids it needs from the
    tokenizer, then :meth:`_build_splits` with the dataset of one stream.

    Args:
        corpus: a prepared folder, a named corpus or text path, or a list of them to mix.
        tokenizer: tokenizer kind to train when a corpus is prepared here.
        vocab_size: vocabulary size to train (None: the kind's default).
        tokenizer_path: a tokenizer.json to use instead of training one.
        seq_len: tokens per example.
        batch_size: examples per batch on each process.
        max_train_tokens: keep only the first this many training tokens.
        max_eval_tokens: keep only the first this many validation and test tokens.
        weights: mixing weight of each corpus in the list (default: their training sizes).
        epoch_tokens: training tokens per epoch (default: every training split once).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle order.
    """

    def __init__(
        self,
        corpus: str | list[str],
        tokenizer: str,
        vocab_size: int | None,
        tokenizer_path: str | None,
        seq_len: int,
        batch_size: int,
        max_train_tokens: int | None,
        max_eval_tokens: int | None,
        weights: list[float] | None,
        epoch_tokens: int | None,
        num_workers: int,
        seed: int,
    ) -> None:
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

    def _open_corpora(
        self, required_tokens: Sequence[str] = (), unk_word: str | None = None
    ) -> None:
        """Find or prepare every corpus, check that they share one tokenizer and load it.

        Args:
            required_tokens: special tokens the task needs in the vocabulary.
            unk_word: a word the text writes for unknown words, encoded as ``[UNK]`` when a
                corpus is prepared here.
        """
        spec = self.tokenizer_path or self.tokenizer_kind
        manifests = []
        for corpus in self.corpora:
            manifests.append(corpus_manifest(corpus, spec, self.requested_vocab_size, unk_word))
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
        self._tokenizer = load_tokenizer(self._tokenizer_file, required_tokens)

    def _build_splits(
        self, examples: Callable[[ShardTokens, str], Dataset], block_tokens: int
    ) -> None:
        """Fill the datasets of every split from the corpora's token streams.

        Validation and test concatenate the corpora; training is the one corpus, or a
        :class:`MixedBlocks` of them by weight and ``epoch_tokens``.

        Args:
            examples: the dataset of one corpus's stream of a split (stream, split name).
            block_tokens: stream tokens one training example consumes (epoch length unit).
        """
        vocab = self._tokenizer.get_vocab_size()
        for split in SPLITS:
            limit = self.max_train_tokens if split == "train" else self.max_eval_tokens
            streams = [split_tokens(m, split, vocab, limit) for m in self.manifests]
            self._tokens[split] = streams[0]
            blocks = [examples(stream, split) for stream in streams]
            if split != "train":
                self._datasets[split] = blocks[0] if len(blocks) == 1 else ConcatDataset(blocks)
            elif len(blocks) == 1 and self.epoch_tokens is None:
                self._datasets[split] = blocks[0]
            else:
                self._datasets[split] = self._mix(blocks, block_tokens)

    def _mix(self, blocks: list[Dataset], block_tokens: int) -> MixedBlocks:
        for corpus, b in zip(self.corpora, blocks, strict=True):
            if len(b) == 0:  # type: ignore[arg-type]
                raise RecipeError(
                    f"data: corpus {corpus} has no training block of seq_len {self.seq_len}"
                )
        sizes = [len(b) for b in blocks]  # type: ignore[arg-type]
        length = self.epoch_tokens // block_tokens if self.epoch_tokens else sum(sizes)
        return MixedBlocks(blocks, self.weights or [float(n) for n in sizes], length)

    @property
    def tokens(self) -> dict[str, ShardTokens]:
        """Token ids per split ("train", "valid", "test"), lines joined, after any limit (of the
        first corpus of a mix): ``len()`` and slices of a memory-mapped stream."""
        self._ensure_prepared()
        return self._tokens
