"""Tokenize a corpus once into token shards: ``python -m lit_unitscale prepare``.

    python -m lit_unitscale prepare --input PATH [PATH ...] --out DIR
        [--tokenizer bpe|wordpiece|word|FILE.json] [--vocab-size N] [--workers N]
        [--text-field NAME] [--unk-word WORD]

A recipe then trains on the folder with ``data.init_args.corpus: DIR``. See docs/data.md.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

from lit_unitscale.data.errors import DataError
from lit_unitscale.errors import LitUnitscaleError
from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser


class PrepareError(LitUnitscaleError, ValueError):
    """A prepare input or setting that cannot work."""


def run(
    inputs: list[str],
    out: str,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    workers: int | None = None,
    text_field: str = "text",
    unk_word: str | None = None,
) -> dict:
    """Prepare `inputs` into `out`; returns the manifest.

    Args:
        inputs: named corpora (ptb, shakespeare, english-mix, ...), text files, folders or globs
            of .txt, .jsonl or .parquet files.
        out: folder to write the shards, tokenizer.json and manifest.json into.
        tokenizer: bpe, wordpiece (for masked-LM encoders) or word, trained on the training
            split, or a tokenizer.json used as it is.
        vocab_size: vocabulary size to train (bpe: 8192; word: every training word).
        workers: tokenizing processes (default: all CPUs).
        text_field: the text field of .jsonl records and .parquet rows.
        unk_word: a word the text writes for unknown words (PTB's <unk>), encoded as the
            tokenizer's [UNK] instead of as pieces.
    """
    from lit_unitscale.data.prepare import prepare

    if vocab_size is not None and vocab_size < 1:
        raise PrepareError(f"prepare: --vocab-size must be >= 1, got {vocab_size}")
    if workers is not None and workers < 1:
        raise PrepareError(f"prepare: --workers must be >= 1, got {workers}")
    try:
        manifest = prepare(
            inputs, out, tokenizer, vocab_size, workers, text_field=text_field, unk_word=unk_word
        )
    except DataError as error:
        raise PrepareError(f"prepare: {error}") from None
    return manifest.data


def build_parser() -> ArgumentParser:
    """The ``prepare`` tool's parser; the help is :func:`run`'s."""
    docs = documented(run)
    parser = tool_parser(
        "prepare",
        "tokenize a corpus once into token shards that training streams "
        "(train with data.init_args.corpus: DIR)",
    )
    parser.add_argument(
        "--input",
        type=str,
        nargs="+",
        required=True,
        metavar="PATH",
        help=docs["inputs"] + " A folder with train.*/valid.*/test.* gives the splits, "
        "otherwise each file is cut 90/5/5 in order.",
    )
    parser.add_argument("--out", type=str, required=True, metavar="DIR", help=docs["out"])
    parser.add_argument(
        "--tokenizer",
        type=str,
        default="bpe",
        metavar="bpe|wordpiece|word|FILE.json",
        help=docs["tokenizer"],
    )
    parser.add_argument(
        "--vocab-size", type=int | None, default=None, metavar="N", help=docs["vocab_size"]
    )
    parser.add_argument(
        "--workers", type=int | None, default=None, metavar="N", help=docs["workers"]
    )
    parser.add_argument("--text-field", type=str, default="text", help=docs["text_field"])
    parser.add_argument("--unk-word", type=str | None, default=None, help=docs["unk_word"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale prepare``.

    Args:
        argv: arguments after ``prepare``.
    """
    args = parse_arguments(build_parser(), argv, PrepareError, "prepare")
    manifest = run(
        args.input,
        args.out,
        args.tokenizer,
        args.vocab_size,
        args.workers,
        args.text_field,
        args.unk_word,
    )
    splits = ", ".join(f"{s} {v['tokens']:,}" for s, v in manifest["splits"].items())
    print(f"prepared {args.out}: tokens {splits}; vocabulary {manifest['tokenizer']['vocab_size']}")
    return 0
