"""The on-disk cache shared by every process: corpora fetched from packages and trained
tokenizers live here. Several processes (DDP ranks, parallel runs) may fill it at once, so every
write happens under an exclusive file lock, into a temporary file that ``os.replace`` then moves
into place: a reader never sees a half-written file."""

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "LIT_UNITSCALE_CACHE"


def cache_root() -> Path:
    """``$LIT_UNITSCALE_CACHE`` if set, else ``~/.cache/lit_unitscale``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lit_unitscale"


@contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock tied to ``target`` (a sibling ``<name>.lock`` file) for the block.

    Args:
        target: the path the lock guards.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    Args:
        path: the file to write.
        data: its new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_file(path: Path, build: Callable[[Path], None]) -> Path:
    """Return ``path``, first creating it with ``build(tmp_path)`` if missing.

    ``build`` writes to a temporary path in the same folder; the result is moved into place
    atomically under the lock, so concurrent callers build it once and all see the whole file.

    Args:
        path: the file to return or create.
        build: writes the file's content to the path it is given.
    """
    if path.exists():
        return path
    with file_lock(path):
        if path.exists():  # another process built it while we waited for the lock
            return path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            build(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
