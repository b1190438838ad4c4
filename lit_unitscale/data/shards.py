"""Reading prepared token shards: the folder ``python -m lit_unitscale prepare`` writes.

A prepared folder holds ``manifest.json``, ``tokenizer.json`` and one litdata dataset per split
(``train/``, ``valid/``, ``test/``: an ``index.json`` and ``chunk-*.bin`` files written by
``litdata.optimize`` for ``litdata.TokensLoader``). Each chunk is litdata's layout: a uint32
item count, uint32 item offsets, then the items' token ids back to back; a split's token stream
is its chunks' tokens in ``index.json`` order. litdata's ``StreamingDataset`` reads the folders
as they are; training reads them here, memory-mapped, as one random-access stream per split, so
the global, seeded, resumable order of ``ResumableSampling`` works on any corpus size.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_unitscale.data.errors import DataFormatError, DataNotFoundError, TokenizerFileError
from lit_unitscale.data.splits import SPLITS

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
# litdata's numpy dtype indices (litdata.constants._NUMPY_DTYPES_MAPPING) of the dtypes we write.
LITDATA_DTYPES = {"uint16": 5, "uint32": 6}


class ShardError(DataFormatError):
    """A prepared folder, its manifest or a chunk file is missing, truncated or corrupt."""


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MB blocks.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_prepared(path: str | Path) -> bool:
    """True if ``path`` is a folder written by ``prepare`` (it has a manifest).

    Args:
        path: the folder.
    """
    return (Path(path).expanduser() / MANIFEST).is_file()


@dataclass(frozen=True)
class Manifest:
    """What a prepared folder holds (its ``manifest.json``).

    Args:
        folder: the prepared folder.
        data: the manifest's content.
    """

    folder: Path
    data: dict[str, Any]

    @property
    def tokenizer_file(self) -> Path:
        """The ``tokenizer.json`` the ids belong to."""
        return self.folder / TOKENIZER_FILE

    @property
    def tokenizer_sha256(self) -> str:
        """The sha256 of the tokenizer the shards were written with."""
        return self.data["tokenizer"]["sha256"]

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the token ids in the chunks."""
        return np.dtype(self.data["dtype"])

    def tokens(self, split: str) -> int:
        """Tokens of a split.

        Args:
            split: "train", "valid" or "test".
        """
        return int(self.data["splits"][split]["tokens"])


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a prepared folder; one clear ``ShardError`` if it is missing or unreadable,
    or if the tokenizer beside it is not the one the manifest recorded.

    Args:
        folder: the prepared folder.
    """
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not folder.exists():
        raise DataNotFoundError(f"Prepared data folder {folder} does not exist.")
    if not path.is_file():
        raise ShardError(
            f"{folder} is not a prepared data folder (no {MANIFEST}); write one with "
            "`python -m lit_unitscale prepare --input ... --out DIR` (an interrupted prepare "
            "resumes when run again)."
        )
    try:
        data = json.loads(path.read_text())
        keys = (data["format"], data["dtype"], data["tokenizer"]["sha256"], data["splits"])
    except (ValueError, KeyError, TypeError) as error:
        raise ShardError(f"{path} is not a valid manifest ({type(error).__name__}).") from None
    if keys[0] != FORMAT_VERSION:
        raise ShardError(f"{path} has format {keys[0]}; this version reads {FORMAT_VERSION}.")
    manifest = Manifest(folder, data)
    if not manifest.tokenizer_file.is_file():
        raise ShardError(f"Prepared folder {folder} has no {TOKENIZER_FILE}.")
    if sha256_file(manifest.tokenizer_file) != manifest.tokenizer_sha256:
        raise TokenizerFileError(
            f"{manifest.tokenizer_file} does not have the sha256 {manifest.tokenizer_sha256} "
            f"that {path} recorded: the tokenizer was replaced after the shards were written."
        )
    return manifest


def check_tokenizer(manifest: Manifest, tokenizer_path: str | Path) -> None:
    """Raise ``TokenizerFileError`` unless ``tokenizer_path`` is the tokenizer the shards were
    written with (same sha256).

    Args:
        manifest: the prepared folder's manifest.
        tokenizer_path: the tokenizer.json a recipe names.
    """
    path = Path(tokenizer_path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"Tokenizer file {path} does not exist; expected a tokenizer.json.")
    actual = sha256_file(path)
    if actual != manifest.tokenizer_sha256:
        raise TokenizerFileError(
            f"The recipe's tokenizer {path} (sha256 {actual[:12]}…) is not the tokenizer "
            f"{manifest.folder} was prepared with (sha256 {manifest.tokenizer_sha256[:12]}…): "
            "its token ids would mean other words; drop tokenizer_path or prepare again with it."
        )


class ShardTokens:
    """One split's token stream, memory-mapped from its litdata chunks.

    ``len()`` is the token count and slicing ``[a:b]`` returns those ids as an int64 tensor (a
    slice may span chunks). Opening checks every chunk's size and header against ``index.json``;
    reads check ids against the vocabulary, so a corrupt chunk is one clear ``ShardError`` rather
    than an index error in the embedding. Picklable for DataLoader workers (maps reopen lazily).

    Args:
        folder: the split's litdata folder (holding index.json).
        dtype: token dtype recorded in the manifest.
        vocab_size: ids must be below this (None: unchecked).
        limit: keep only the first this many tokens.
    """

    def __init__(
        self,
        folder: Path,
        dtype: np.dtype,
        vocab_size: int | None = None,
        limit: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        index_path = self.folder / "index.json"
        try:
            index = json.loads(index_path.read_text())
            chunks = [
                (c["filename"], int(c["chunk_bytes"]), int(c["dim"])) for c in index["chunks"]
            ]
            formats = index["config"]["data_format"]
        except FileNotFoundError:
            raise ShardError(f"Shard folder {self.folder} has no index.json.") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ShardError(
                f"{index_path} is not a litdata index ({type(error).__name__})."
            ) from None
        expected = f"no_header_numpy:{LITDATA_DTYPES.get(self.dtype.name)}"
        if chunks and formats != [expected]:
            raise ShardError(f"{index_path} holds {formats}, not {self.dtype.name} token ids.")
        self._files: list[Path] = []
        self._offsets: list[int] = []  # byte offset of each chunk's tokens
        self._starts = [0]  # token index where each chunk starts
        for name, size, dim in chunks:
            path = self.folder / name
            self._offsets.append(self._check_chunk(path, size, dim))
            self._files.append(path)
            self._starts.append(self._starts[-1] + dim)
        total = self._starts[-1]
        self.length = total if limit is None else min(limit, total)
        self._maps: dict[int, np.memmap] = {}

    def _check_chunk(self, path: Path, size: int, dim: int) -> int:
        if not path.is_file():
            raise ShardError(f"Shard {path} is missing (listed in {self.folder / 'index.json'}).")
        actual = path.stat().st_size
        if actual != size:
            raise ShardError(
                f"Shard {path} has {actual} bytes but index.json records {size}: it is truncated "
                "or was overwritten; prepare the corpus again."
            )
        with open(path, "rb") as handle:
            head = handle.read(4)
            count = int(np.frombuffer(head, dtype=np.uint32)[0]) if len(head) == 4 else -1
            offsets = np.frombuffer(handle.read(4 * (count + 1)), dtype=np.uint32)
        header = 4 + 4 * (count + 1)
        if (
            count < 0
            or len(offsets) != count + 1
            or int(offsets[0]) != header
            or int(offsets[-1]) != size
            or np.any(np.diff(offsets.astype(np.int64)) < 0)
            or size - header != dim * self.dtype.itemsize
        ):
            raise ShardError(
                f"Shard {path} has a corrupt header (not the {dim} {self.dtype.name} tokens "
                "index.json records); prepare the corpus again."
            )
        return header

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def __len__(self) -> int:
        return self.length

    def _map(self, chunk: int) -> np.memmap:
        if chunk not in self._maps:
            count = self._starts[chunk + 1] - self._starts[chunk]
            self._maps[chunk] = np.memmap(
                self._files[chunk], dtype=self.dtype, mode="r", offset=self._offsets[chunk],
                shape=(count,),
            )  # fmt: skip
        return self._maps[chunk]

    def __getitem__(self, key: slice) -> Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardTokens supports contiguous slices only")
        start, stop, _ = key.indices(self.length)
        parts = []
        position = start
        while position < stop:
            chunk = bisect.bisect_right(self._starts, position) - 1
            end = min(stop, self._starts[chunk + 1])
            base = self._starts[chunk]
            parts.append(self._map(chunk)[position - base : end - base])
            position = end
        ids = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.empty(0)
        out = torch.from_numpy(ids.astype(np.int64))
        if self.vocab_size is not None and len(out) and int(out.max()) >= self.vocab_size:
            chunk = bisect.bisect_right(self._starts, start) - 1
            raise ShardError(
                f"Shard {self._files[chunk]} holds token id {int(out.max())}, beyond the "
                f"tokenizer's {self.vocab_size} ids: the file is corrupt; prepare the corpus again."
            )
        return out

    def tensor(self) -> Tensor:
        """The whole stream as one tensor (small corpora and tests only)."""
        return self[:]

    def tolist(self) -> list[int]:
        """The whole stream as a list of ids (small corpora and tests only)."""
        return self[:].tolist()


def split_tokens(
    manifest: Manifest, split: str, vocab_size: int | None = None, limit: int | None = None
) -> ShardTokens:
    """The token stream of ``split`` ("train", "valid" or "test") of a prepared folder.

    Args:
        manifest: the prepared folder's manifest.
        split: "train", "valid" or "test".
        vocab_size: ids must be below this (None: unchecked).
        limit: keep only the first this many tokens.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    stream = ShardTokens(manifest.folder / split, manifest.dtype, vocab_size, limit)
    if stream.length != manifest.tokens(split) and limit is None:
        raise ShardError(
            f"{manifest.folder / split} holds {stream.length} tokens but {MANIFEST} records "
            f"{manifest.tokens(split)}; prepare the corpus again."
        )
    return stream


class MixedBlocks(Dataset):
    """Training examples drawn from several block datasets by weight, in an epoch of ``length``.

    Dataset c gets a share ``k_c`` of the epoch proportional to its weight (largest remainders
    round it to whole examples). Its examples are spread evenly over it when ``k_c`` is below
    its size, and cycle through it when above, so a token-count epoch may be shorter or longer
    than a corpus. The sampler shuffles the epoch, so the corpora interleave.

    Args:
        datasets: the datasets to mix (each map-style, non-empty).
        weights: one non-negative weight per dataset, not all zero.
        length: examples per epoch.
    """

    def __init__(self, datasets: list[Dataset], weights: list[float], length: int) -> None:
        total = float(sum(weights))
        exact = [length * w / total for w in weights]
        shares = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda c: (shares[c] - exact[c], c))
        for c in by_remainder[: length - sum(shares)]:
            shares[c] += 1
        self.datasets = datasets
        self.sizes = [len(d) for d in datasets]  # type: ignore[arg-type]
        self.shares = shares
        self._starts = np.cumsum([0, *shares]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        c = bisect.bisect_right(self._starts, index) - 1
        j, share, size = index - self._starts[c], self.shares[c], self.sizes[c]
        inner = j * size // share if share <= size else j % size
        return self.datasets[c][inner]
