"""Tokenizers trained here, on the training split, with HF ``tokenizers``, saved as tokenizer.json
and cached under a key that hashes the corpus and the settings.

- "word": whitespace word-level, vocabulary = every training word (or the most frequent
  ``vocab_size``) plus ``<eos>`` (appended to each line, Zaremba et al. 2014) and ``<unk>``. On
  PTB this is exactly the standard 10,000-word vocabulary, so perplexity is per word and
  comparable to published numbers.
- "bpe": byte-level BPE (GPT-2 style; every string encodes, nothing is ``[UNK]``).
- "wordpiece": BERT-style WordPiece, case kept (named entities need it).

Subword tokenizers carry the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` as ids 0..4.
They have no post-processor: the datamodules add ``[CLS]``/``[SEP]`` themselves, so a
tokenizer.json from pretraining behaves the same when a fine-tuning module loads it by path.
"""

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lit_unitscale.data.cache import cache_root, cached_file
from lit_unitscale.data.errors import DataNotFoundError, TokenizerFileError

TokenizerKind = Literal["word", "bpe", "wordpiece"]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
WORD_EOS, WORD_UNK = "<eos>", "<unk>"

# Bump when the recipe for building a tokenizer changes, so stale cache entries are not reused.
_RECIPE_VERSION = "1"


def word_vocabulary(lines: Iterable[str], max_size: int | None = None) -> list[str]:
    """Words of ``lines`` plus ``<eos>`` once per line, most frequent first (ties alphabetical).

    ``<unk>`` is always in the vocabulary (PTB already has it in its text); with ``max_size`` the
    rarest words are dropped and will encode as ``<unk>``. ``lines`` may be a stream: memory grows
    with the vocabulary, not with the text.

    Args:
        lines: the training lines.
        max_size: keep at most this many words (None: all).
    """
    counts: Counter[str] = Counter()
    n_lines = 0
    for line in lines:
        counts.update(line.split())
        n_lines += 1
    counts[WORD_EOS] += n_lines
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if max_size is not None and len(words) > max_size:
        words = [w for w in words if w != WORD_UNK][: max_size - 1]
    if WORD_UNK not in words:
        words.append(WORD_UNK)
    return words


def build_word_tokenizer(lines: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
    """A whitespace word-level tokenizer over ``word_vocabulary(lines, vocab_size)``.

    Args:
        lines: the training lines.
        vocab_size: keep at most this many words (None: all).
    """
    vocab = {word: i for i, word in enumerate(word_vocabulary(lines, vocab_size))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=WORD_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def train_subword_tokenizer(
    kind: Literal["bpe", "wordpiece"], lines: Iterable[str], vocab_size: int
) -> Tokenizer:
    """A byte-level BPE or WordPiece tokenizer trained on ``lines``, special tokens first.

    Args:
        kind: "bpe" or "wordpiece".
        lines: the training lines.
        vocab_size: vocabulary size to train.
    """
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        # add_prefix_space: a word gets the same tokens at the start of a line as inside it,
        # and pre-split words (NER) encode like running text.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
        )
    else:
        raise ValueError(f"Unknown subword tokenizer kind {kind!r}; expected 'bpe' or 'wordpiece'.")
    length = len(lines) if isinstance(lines, Sequence) else None
    tokenizer.train_from_iterator(lines, trainer=trainer, length=length)
    return tokenizer


def tokenizer_cache_path(kind: str, lines: Sequence[str], vocab_size: int | None) -> Path:
    """Where the tokenizer trained on ``lines`` with these settings is cached.

    Args:
        kind: tokenizer kind.
        lines: the training lines.
        vocab_size: vocabulary size.
    """
    digest = hashlib.sha256(f"{_RECIPE_VERSION}|{kind}|{vocab_size}|".encode())
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return cache_root() / "tokenizers" / f"{kind}-{vocab_size}-{digest.hexdigest()[:16]}.json"


def cached_tokenizer(kind: TokenizerKind, lines: Sequence[str], vocab_size: int | None) -> Path:
    """Path of a tokenizer.json trained on ``lines``, training and caching it on first use.

    Args:
        kind: tokenizer kind.
        lines: the training lines.
        vocab_size: vocabulary size (word: None keeps every word).
    """

    def build(tmp: Path) -> None:
        if kind == "word":
            tokenizer = build_word_tokenizer(lines, vocab_size)
        else:
            tokenizer = train_subword_tokenizer(kind, lines, int(vocab_size))
        tokenizer.save(str(tmp))

    return cached_file(tokenizer_cache_path(kind, lines, vocab_size), build)


def load_tokenizer(path: str | Path, required_tokens: Sequence[str] = ()) -> Tokenizer:
    """Load a tokenizer.json, raising one clear ``DataError`` if it is missing, corrupt, or lacks
    any of ``required_tokens``.

    Args:
        path: the tokenizer.json.
        required_tokens: special tokens it must hold.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"Tokenizer file {path} does not exist; expected a tokenizer.json.")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception on bad JSON or schema
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TokenizerFileError(
            f"Tokenizer file {path} is not a valid HF tokenizers tokenizer.json ({reason})."
        ) from None
    missing = [t for t in required_tokens if tokenizer.token_to_id(t) is None]
    if missing:
        raise TokenizerFileError(
            f"Tokenizer file {path} lacks the special tokens {' '.join(missing)} that this data "
            "module needs."
        )
    return tokenizer


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of ``token``; ``TokenizerFileError`` if the vocabulary lacks it.

    Args:
        tokenizer: the tokenizer.
        token: the token.
    """
    index = tokenizer.token_to_id(token)
    if index is None:
        raise TokenizerFileError(f"The tokenizer has no {token} token.")
    return index


def is_word_level(tokenizer: Tokenizer) -> bool:
    """True for the word-level tokenizers built here (they end lines with ``<eos>``).

    Args:
        tokenizer: the tokenizer.
    """
    return json.loads(tokenizer.to_str())["model"]["type"] == "WordLevel"
