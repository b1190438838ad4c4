"""Tokenize a corpus once into token shards: ``python -m lit_unitscale prepare``.

    python -m lit_unitscale prepare --input PATH [PATH ...] --out DIR
        [--tokenizer bpe|word|FILE.json] [--vocab-size N] [--workers N]

A recipe then trains on the folder with ``data.init_args.corpus: DIR``. See docs/data.md.
"""

from __future__ import annotations

import argparse

from lit_unitscale.data.errors import DataError
from lit_unitscale.errors import LitUnitscaleError


class PrepareError(LitUnitscaleError, ValueError):
    """A prepare input or setting that cannot work."""


def run(
    inputs: list[str],
    out: str,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    workers: int | None = None,
    text_field: str = "text",
) -> dict:
    """Prepare `inputs` into `out`; returns the manifest.

    Args:
        inputs: named corpora (ptb, shakespeare, english-mix, ...), text files, folders or globs
            of .txt, .jsonl or .parquet files.
        out: folder to write the shards, tokenizer.json and manifest.json into.
        tokenizer: bpe or word (trained on the training split), or a tokenizer.json.
        vocab_size: vocabulary size to train (bpe: 8192; word: every training word).
        workers: tokenizing processes (default: all CPUs).
        text_field: the text field of .jsonl records and .parquet rows.
    """
    from lit_unitscale.data.prepare import prepare

    if vocab_size is not None and vocab_size < 1:
        raise PrepareError(f"prepare: --vocab-size must be >= 1, got {vocab_size}")
    if workers is not None and workers < 1:
        raise PrepareError(f"prepare: --workers must be >= 1, got {workers}")
    try:
        manifest = prepare(inputs, out, tokenizer, vocab_size, workers, text_field=text_field)
    except DataError as error:
        raise PrepareError(f"prepare: {error}") from None
    return manifest.data


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale prepare``.

    Args:
        argv: arguments after ``prepare``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lit_unitscale prepare",
        description="tokenize a corpus once into token shards that training streams "
        "(train with data.init_args.corpus: DIR)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="named corpora (ptb, shakespeare, shakespeare+ptb, english-mix), text files, "
        "folders or globs of .txt/.jsonl/.parquet; a folder with train.*/valid.*/test.* gives "
        "the splits, otherwise each file is cut 90/5/5 in order",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument(
        "--tokenizer",
        default="bpe",
        metavar="bpe|word|FILE.json",
        help="byte-level BPE or whitespace words trained on the training split, or a "
        "tokenizer.json to use as it is (default: bpe)",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=None, metavar="N", help="vocabulary to train"
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: all CPUs)"
    )
    parser.add_argument(
        "--text-field",
        default="text",
        help="text field of .jsonl records and .parquet rows (default: text)",
    )
    args = parser.parse_args(argv)
    manifest = run(
        args.input, args.out, args.tokenizer, args.vocab_size, args.workers, args.text_field
    )
    splits = ", ".join(f"{s} {v['tokens']:,}" for s, v in manifest["splits"].items())
    print(f"prepared {args.out}: tokens {splits}; vocabulary {manifest['tokenizer']['vocab_size']}")
    return 0
