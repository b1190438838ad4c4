"""Tokenize a corpus once into token shards (``python -m lit_unitscale prepare``).

The input is streamed, never held: a first pass over each file hashes it, counts its units
(non-blank lines of text, records of JSON lines or Parquet) and notes a byte offset every few
MB; the splits are given (``train.*``/``valid.*``/``test.*`` files) or cut in order, 90/5/5 of
each file's units, as ``text_corpora`` cuts them. The work is then a list of pieces of a few MB,
each inside one split, which ``litdata.optimize`` spreads over worker processes in order; each
piece yields its token ids in batches, so a worker holds a few MB of text and one litdata chunk
at a time. Pieces are grouped into parts; a finished part is kept, so an interrupted prepare
resumes at the first unfinished part. ``manifest.json`` is written last: a folder without it
is incomplete.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tokenizers import Tokenizer

from lit_unitscale.data.cache import atomic_write_bytes
from lit_unitscale.data.errors import DataFormatError, DataNotFoundError, EmptyDataError
from lit_unitscale.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER_FILE,
    Manifest,
    read_manifest,
    sha256_file,
)
from lit_unitscale.data.splits import SPLITS, contiguous_split, given_split_files
from lit_unitscale.data.text_corpora import NAMED_TEXT_CORPORA, named_sources
from lit_unitscale.data.text_tokenizers import (
    UNK,
    WORD_EOS,
    build_word_tokenizer,
    cached_tokenizer,
    is_word_level,
    load_tokenizer,
    token_id,
    train_subword_tokenizer,
)

T = TypeVar("T")
# Tokenizer kinds trained here; any other tokenizer argument is a tokenizer.json.
TRAINED_TOKENIZERS = ("word", "bpe", "wordpiece")
SUFFIXES = (".txt", ".jsonl", ".parquet")
PIECE_BYTES = 8 << 20  # text per unit of work (and per resume step inside a part)
PART_BYTES = 512 << 20  # text per resumable part
CHUNK_BYTES = 64 << 20  # litdata chunk size
BATCH_BYTES = 1 << 20  # text per encode_batch call
# Below this much training text a tokenizer is trained on all of it, exactly as before shards
# (and shared with the same cache entry); above it, on a sample of this size.
SAMPLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Piece:
    """Units ``[lo, hi)`` of one file, read from ``[start, end)`` (bytes, or Parquet row groups),
    whose first unit has index ``first``."""

    path: str
    kind: str  # "text" | "jsonl" | "parquet"
    start: int
    end: int
    first: int
    lo: int
    hi: int
    text_bytes: int


@dataclass(frozen=True)
class _Scan:
    path: Path
    kind: str
    size: int
    sha256: str
    units: int
    marks: list[tuple[int, int]]  # (offset, units before it), last = (end, units)


def _kind(path: Path) -> str:
    return {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}[path.suffix]


def _supported(paths: Sequence[Path], where: str) -> list[Path]:
    files = sorted(p for p in paths if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise EmptyDataError(f"{where} holds no .txt files (nor .jsonl or .parquet ones).")
    return files


def resolve_inputs(inputs: Sequence[str]) -> list[tuple[Path, str | None]]:
    """Files to read and the split each belongs to (None: cut 90/5/5 in order), in order.

    Args:
        inputs: named corpora, files, folders or globs.
    """
    if not inputs:
        raise EmptyDataError("prepare: no --input given.")
    out: list[tuple[Path, str | None]] = []
    for spec in inputs:
        if spec in NAMED_TEXT_CORPORA:
            out += named_sources(spec)
            continue
        if any(c in spec for c in "*?["):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
            out += [(p, None) for p in _supported(matches, f"The pattern {spec!r}")]
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataNotFoundError(
                f"Input {spec} does not exist; expected one of {', '.join(NAMED_TEXT_CORPORA)}, "
                f"a file or folder of {', '.join(SUFFIXES)} files, or a glob."
            )
        if path.is_file():
            out += [(p, None) for p in _supported([path], f"Input {path}")]
            continue
        given = given_split_files(path)
        if given is not None:
            out += [(file, split) for split, file in given.items()]
        else:
            out += [(p, None) for p in _supported(list(path.rglob("*")), f"Folder {path}")]
    return out


def _text_units(line: bytes) -> list[str]:
    # Decoding each \n-terminated line, then splitlines(), gives the lines that
    # read_text(path).splitlines() gives on the whole file (\n never sits inside a UTF-8 char).
    return [s.strip() for s in line.decode("utf-8", errors="replace").splitlines() if s.strip()]


def _scan(path: Path, kind: str, text_field: str) -> _Scan:
    digest = hashlib.sha256()
    size = path.stat().st_size
    marks: list[tuple[int, int]] = []
    units = 0
    if kind == "parquet":
        meta = _parquet().ParquetFile(path).metadata
        if text_field not in meta.schema.names:
            raise DataFormatError(f"Parquet file {path} has no column {text_field!r}.")
        for group in range(meta.num_row_groups):
            marks.append((group, units))
            units += meta.row_group(group).num_rows
        marks.append((meta.num_row_groups, units))
        return _Scan(path, kind, size, sha256_file(path), units, marks)
    offset = 0
    next_mark = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if offset >= next_mark:
                marks.append((offset, units))
                next_mark = offset + PIECE_BYTES
            digest.update(line)
            offset += len(line)
            if kind == "text":
                units += len(_text_units(line))
            elif line.strip():
                _record_text(line, text_field, path, number)
                units += 1
    marks.append((offset, units))
    return _Scan(path, kind, size, digest.hexdigest(), units, marks)


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFormatError("Reading .parquet input needs pyarrow: pip install pyarrow") from None
    return pq


def _record_text(line: bytes, field: str, path: Path | str, number: int) -> str:
    try:
        text = json.loads(line)[field]
    except (ValueError, KeyError, TypeError):
        raise DataFormatError(
            f"Line {number} of {path} is not a JSON object with a {field!r} text field."
        ) from None
    if not isinstance(text, str):
        raise DataFormatError(f"Line {number} of {path}: field {field!r} is not a string.")
    return text


def piece_lines(piece: Piece, text_field: str, unk_word: str | None = None) -> Iterator[str]:
    """The stripped, non-blank lines of the piece's units, in order.

    Args:
        piece: the units to read.
        text_field: the text field of .jsonl records and .parquet rows.
        unk_word: a word the text writes for unknown words, replaced by ``[UNK]``.
    """
    lines = _piece_lines(piece, text_field)
    if unk_word is None:
        return lines
    return (line.replace(unk_word, UNK) for line in lines)


def _piece_lines(piece: Piece, text_field: str) -> Iterator[str]:
    index = piece.first
    if piece.kind == "parquet":
        table = _parquet().ParquetFile(piece.path)
        for group in range(piece.start, piece.end):
            for text in table.read_row_group(group, columns=[text_field]).column(0).to_pylist():
                if piece.lo <= index < piece.hi:
                    yield from (s.strip() for s in (text or "").splitlines() if s.strip())
                index += 1
        return
    with open(piece.path, "rb") as handle:
        handle.seek(piece.start)
        remaining = piece.end - piece.start
        for line in handle:
            if remaining <= 0 or index >= piece.hi:
                return
            remaining -= len(line)
            if piece.kind == "text":
                for unit in _text_units(line):
                    if piece.lo <= index < piece.hi:
                        yield unit
                    index += 1
            elif line.strip():
                if piece.lo <= index:
                    text = _record_text(line, text_field, piece.path, -1)
                    yield from (s.strip() for s in text.splitlines() if s.strip())
                index += 1


def plan_pieces(
    scans: Sequence[tuple[_Scan, str | None]],
) -> dict[str, list[Piece]]:
    """Pieces of each split, in input order (each file's split ranges cut 90/5/5 by units).

    Args:
        scans: each input file's scan and its given split (None: cut).
    """
    out: dict[str, list[Piece]] = {split: [] for split in SPLITS}
    for scan, given in scans:
        if given is not None:
            ranges = {given: (0, scan.units)}
        else:
            cut = contiguous_split(range(scan.units))
            ranges = {s: (r[0], r[-1] + 1) if r else (0, 0) for s, r in cut.items()}
        for split, (lo, hi) in ranges.items():
            if hi <= lo:
                continue
            for (a, ua), (b, ub) in itertools.pairwise(scan.marks):
                if ub <= lo or ua >= hi or ub == ua:
                    continue
                share = (min(hi, ub) - max(lo, ua)) / (ub - ua)
                if scan.kind == "parquet":
                    text_bytes = int(scan.size * share * (b - a) / max(scan.marks[-1][0], 1))
                else:
                    text_bytes = int((b - a) * share)
                out[split].append(Piece(str(scan.path), scan.kind, a, b, ua, lo, hi, text_bytes))
    return out


class _Counters:
    """Bytes and tokens done, shared with the forked litdata workers."""

    def __init__(self) -> None:
        self.bytes = mp.Value("q", 0, lock=True)
        self.tokens = mp.Value("q", 0, lock=True)

    def add(self, n_bytes: int, n_tokens: int) -> None:
        with self.bytes.get_lock():
            self.bytes.value += n_bytes
        with self.tokens.get_lock():
            self.tokens.value += n_tokens


class _Encoder:
    """litdata's ``fn``: one piece → its token ids, one uint16/uint32 array per text batch."""

    def __init__(
        self,
        tokenizer_file: Path,
        dtype: str,
        text_field: str,
        counters: _Counters,
        unk_word: str | None = None,
    ) -> None:
        self.tokenizer_file = str(tokenizer_file)
        self.dtype = dtype
        self.text_field = text_field
        self.unk_word = unk_word
        self.counters = counters
        self._tokenizer: Tokenizer | None = None
        self._eos: int | None = None

    def _encode(self, lines: list[str]) -> np.ndarray:
        tokenizer = self._tokenizer
        if self._eos is not None:
            encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
            eos = [self._eos]
            ids = itertools.chain.from_iterable(itertools.chain((e.ids, eos) for e in encodings))
            ids = itertools.chain.from_iterable(ids)
        else:
            encodings = tokenizer.encode_batch([line + "\n" for line in lines], False)
            ids = itertools.chain.from_iterable(e.ids for e in encodings)
        return np.fromiter(ids, dtype=self.dtype)

    def __call__(self, piece: Piece) -> Iterator[np.ndarray]:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_file(self.tokenizer_file)
            word = is_word_level(self._tokenizer)
            self._eos = token_id(self._tokenizer, WORD_EOS) if word else None
        batch: list[str] = []
        size = 0
        lines = piece_lines(piece, self.text_field, self.unk_word)
        for line in itertools.chain(lines, [None]):
            if line is not None:
                batch.append(line)
                size += len(line) + 1
            if batch and (line is None or size >= BATCH_BYTES):
                ids = self._encode(batch)
                self.counters.add(size, len(ids))
                batch, size = [], 0
                if len(ids):
                    yield ids


class _Progress:
    """A progress bar over all parts, with MB/s and tokens/s, fed by the shared counters."""

    def __init__(self, counters: _Counters, total_bytes: int, enabled: bool) -> None:
        self.counters, self.total, self.enabled = counters, total_bytes, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _run(self) -> None:
        from tqdm import tqdm

        start = time.monotonic()
        with tqdm(total=self.total, unit="B", unit_scale=True, desc="prepare") as bar:
            while True:
                stopped = self._stop.wait(0.5)
                done, tokens = self.counters.bytes.value, self.counters.tokens.value
                elapsed = max(time.monotonic() - start, 1e-9)
                bar.n = min(done, self.total)
                bar.set_postfix_str(
                    f"{done / elapsed / 1e6:.1f} MB/s {tokens / elapsed:,.0f} tok/s"
                )
                if stopped:
                    return


def _train_tokenizer(
    tokenizer: str,
    vocab_size: int | None,
    train: list[Piece],
    text_field: str,
    unk_word: str | None,
) -> Path:
    """A tokenizer.json: the given file, or trained on the training split (or a sample)."""
    if tokenizer not in TRAINED_TOKENIZERS:
        return Path(tokenizer).expanduser()
    size = vocab_size if vocab_size is not None or tokenizer == "word" else 8192
    total = sum(p.text_bytes for p in train)
    if total <= SAMPLE_BYTES:
        # Small corpora: all training lines, the tokenizer and cache entry of earlier versions.
        lines = [line for piece in train for line in piece_lines(piece, text_field, unk_word)]
        if not lines:
            raise EmptyDataError("prepare: the training split holds no text.")
        return cached_tokenizer(tokenizer, lines, size)  # type: ignore[arg-type]

    def all_lines() -> Iterator[str]:
        for piece in train:
            yield from piece_lines(piece, text_field, unk_word)

    if tokenizer == "word":  # exact counts over the whole split; memory ~ the vocabulary
        model = build_word_tokenizer(all_lines(), size)
    else:  # evenly spaced pieces, SAMPLE_BYTES of them
        stride = max(1, round(total / SAMPLE_BYTES))

        def sample() -> Iterator[str]:
            for piece in train[::stride]:
                yield from piece_lines(piece, text_field, unk_word)

        model = train_subword_tokenizer(tokenizer, sample(), int(size))  # type: ignore[arg-type]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lit_unitscale-tokenizer-{os.getpid()}.json"
    model.save(str(path))
    return path


def _parts(pieces: list[Piece]) -> list[list[Piece]]:
    parts: list[list[Piece]] = []
    size = PART_BYTES
    for piece in pieces:
        if size >= PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(piece)
        size += piece.text_bytes
    return parts


def _empty_index(dtype: str) -> dict[str, Any]:
    from lit_unitscale.data.shards import LITDATA_DTYPES

    config = {"chunk_bytes": CHUNK_BYTES, "chunk_size": None, "compression": None}
    config |= {"data_format": [f"no_header_numpy:{LITDATA_DTYPES[dtype]}"]}
    config |= {"item_loader": "TokensLoader", "data_spec": None, "encryption": None}
    return {"chunks": [], "config": config}


def _merge(part_dirs: list[Path], target: Path, dtype: str) -> int:
    """Move the parts' chunks into one litdata folder; returns its token count."""
    tmp = target.with_name(target.name + ".merging")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    merged = _empty_index(dtype)
    for k, part in enumerate(part_dirs):
        index_file = part / "index.json"
        if not index_file.is_file():  # a part whose units were all blank
            continue
        index = json.loads(index_file.read_text())
        if not merged["chunks"]:
            merged["config"] = index["config"]
        for chunk in index["chunks"]:
            name = f"chunk-{k}-{chunk['filename'].removeprefix('chunk-')}"
            os.replace(part / chunk["filename"], tmp / name)
            merged["chunks"].append({**chunk, "filename": name})
    atomic_write_bytes(tmp / "index.json", json.dumps(merged).encode())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return sum(int(c["dim"]) for c in merged["chunks"])


def keeps_random_state(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` without changing the caller's torch, numpy and Python random states.

    Preparing data on first use happens inside a run, after ``seed_everything`` and before the
    model is built: a tokenizer trainer or litdata drawing from the global generators would
    give the process that prepares another initialisation than one that found the cache ready
    (a 1-process run and a 2-process run of the same recipe would differ).

    Args:
        fn: the function to wrap.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import random

        import torch

        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return fn(*args, **kwargs)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    return wrapper


@keeps_random_state
def prepare(
    inputs: Sequence[str],
    out: str | Path,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    workers: int | None = None,
    *,
    text_field: str = "text",
    unk_word: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Tokenize ``inputs`` into token shards under ``out``; returns the manifest.

    Args:
        inputs: named corpora, files, folders or globs of .txt / .jsonl / .parquet.
        out: the folder to write (an unfinished one is resumed).
        tokenizer: "bpe", "wordpiece", "word", or a tokenizer.json to use as it is.
        vocab_size: vocabulary to train (bpe and wordpiece default 8192; word: all words).
        workers: worker processes (default: all CPUs).
        text_field: the text field of .jsonl records and .parquet rows.
        unk_word: a word the text writes for unknown words (PTB's ``<unk>``), encoded as the
            tokenizer's ``[UNK]`` (masked-LM vocabularies) instead of as its pieces.
        progress: show a progress bar with MB/s and tokens/s.
    """
    import litdata

    out = Path(out).expanduser()
    tokenizer_spec = tokenizer
    if tokenizer not in TRAINED_TOKENIZERS:
        load_tokenizer(tokenizer)  # one clear error if it is not a tokenizer.json
        tokenizer_spec = sha256_file(Path(tokenizer).expanduser())
    request = {
        "inputs": list(inputs),
        "tokenizer": tokenizer_spec,
        "vocab_size": vocab_size,
        "text_field": text_field,
    }
    if unk_word is not None:  # only when set: folders prepared without it keep their request
        request["unk_word"] = unk_word
    if (out / MANIFEST).is_file():
        done = read_manifest(out)
        if done.data.get("request") != request:
            raise DataFormatError(
                f"{out} already holds a corpus prepared from other inputs or settings "
                f"({done.data.get('request')}); choose another --out or delete it."
            )
        return done
    workers = max(1, workers or os.cpu_count() or 1)
    resolved = resolve_inputs(inputs)
    scans = [(_scan(path, _kind(path), text_field), split) for path, split in resolved]
    pieces = plan_pieces(scans)
    if not any(pieces.values()):
        if len(scans) == 1:
            raise EmptyDataError(f"Data file {scans[0][0].path} is empty; expected text.")
        raise EmptyDataError(
            f"prepare: the inputs {' '.join(inputs)} hold no text (every line is blank)."
        )
    if not pieces["train"]:
        raise EmptyDataError(f"prepare: the inputs {' '.join(inputs)} leave the train split empty.")
    work = out / ".work"
    plan = {
        **request,
        "sources": [{"path": str(s.path), "bytes": s.size, "sha256": s.sha256} for s, _ in scans],
    }
    plan_file = work / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(work)  # other inputs or settings: the finished parts do not apply
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plan_file, json.dumps(plan).encode())

    tokenizer_out = work / TOKENIZER_FILE
    if not tokenizer_out.is_file():
        source = _train_tokenizer(tokenizer, vocab_size, pieces["train"], text_field, unk_word)
        atomic_write_bytes(tokenizer_out, source.read_bytes())
        if source.name.startswith("lit_unitscale-tokenizer-"):
            source.unlink()
    model = load_tokenizer(tokenizer_out)
    vocab = model.get_vocab_size()
    dtype = "uint16" if vocab <= 1 << 16 else "uint32"

    counters = _Counters()
    encoder = _Encoder(tokenizer_out, dtype, text_field, counters, unk_word)
    # Forked workers must not inherit a thread pool the parent's tokenizer training started.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    total = sum(p.text_bytes for split in SPLITS for p in pieces[split])
    counts: dict[str, int] = {}
    with _Progress(counters, total, progress):
        for split in SPLITS:
            part_dirs = []
            for k, part in enumerate(_parts(pieces[split])):
                folder = work / f"{split}-{k:05d}"
                part_dirs.append(folder)
                if (folder / ".done").is_file():
                    counters.add(sum(p.text_bytes for p in part), 0)
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                litdata.optimize(
                    fn=encoder,
                    inputs=part,
                    output_dir=str(folder),
                    num_workers=min(workers, len(part)),
                    chunk_bytes=CHUNK_BYTES,
                    item_loader=litdata.TokensLoader(),
                    reorder_files=False,
                    keep_data_ordered=True,  # the token stream is the pieces' order
                    start_method="fork",
                    verbose=False,
                )
                (folder / ".done").touch()
            counts[split] = _merge(part_dirs, work / split, dtype)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        os.replace(work / split, out / split)
    os.replace(tokenizer_out, out / TOKENIZER_FILE)
    manifest = {
        "format": FORMAT_VERSION,
        "inputs": list(inputs),
        "sources": plan["sources"],
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": sha256_file(out / TOKENIZER_FILE),
            "kind": "word"
            if is_word_level(model)
            else tokenizer
            if tokenizer in TRAINED_TOKENIZERS
            else "file",
            "vocab_size": vocab,
        },
        "dtype": dtype,
        "splits": {split: {"tokens": counts[split]} for split in SPLITS},
        "text_field": text_field,
        "litdata": litdata.__version__,
        "request": request,
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    shutil.rmtree(work, ignore_errors=True)
    return read_manifest(out)
