"""Checkpoints written atomically: a crash leaves the previous checkpoint or the new one.

Saving writes a temporary file in the checkpoint's own directory, fsyncs it, then
``os.replace``s it over the target (and fsyncs the directory), so a crash, ``kill -9`` or full
disk at any moment leaves either the previous checkpoint or the new one, never half a file.
Lightning's own ``_atomic_save`` stages through fsspec's temporary file in ``/tmp`` (another
filesystem on many clusters, so the final move is a copy) and never fsyncs.

Sharded checkpoints (an FSDP2 distributed-checkpoint folder, a DeepSpeed tag folder) get the
same guarantee from :func:`atomic_folder_save`: every rank writes its shard into a sibling
``.<name>.partial`` folder, and after a barrier one rank swaps it in by rename (one atomic
``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, the old folder parked as
``.<name>.previous`` and put back by :func:`recover_folder_swaps` if a crash falls between them).

Loading is :mod:`lit_unitscale.checkpoints.load`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_unitscale.errors import CheckpointFileError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that readers only ever see a complete file.

    Args:
        obj: what to save (a checkpoint dict).
        path: the destination file; its directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; keep the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


PARTIAL = ".partial"
PREVIOUS = ".previous"


def _sibling(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}{suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(root))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    path_arg = [ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes = [*path_arg, *path_arg, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # filesystem without exchange support (some network filesystems)
    raise OSError(code, f"renameat2 {a} <-> {b}: {os.strerror(code)}")


def swap_in(staged: Path, path: Path) -> None:
    """Put the complete folder (or file) ``staged`` at ``path``, replacing what was there.

    Args:
        staged: the new checkpoint, a sibling of ``path``.
        path: where readers look for it.
    """
    if not (path.exists() or path.is_symlink()):
        os.rename(staged, path)
    elif _exchange(staged, path):
        _fsync_dir(path.parent)
        _remove(staged)  # now the old checkpoint
    else:
        previous = _sibling(path, PREVIOUS)
        _remove(previous)
        os.rename(path, previous)
        os.rename(staged, path)
        _fsync_dir(path.parent)
        _remove(previous)
    _fsync_dir(path.parent)


def recover_folder_swaps(directory: str | Path) -> list[Path]:
    """Undo what a crash mid-save left in ``directory``: a parked ``.<name>.previous`` whose
    ``<name>`` is missing goes back; stale ``.partial`` and ``.previous`` entries are removed.
    Returns the checkpoints put back.

    Args:
        directory: a checkpoint directory (ModelCheckpoint's ``dirpath``).
    """
    directory = Path(directory)
    restored: list[Path] = []
    if not directory.is_dir():
        return restored
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if not name.startswith("."):
            continue
        if name.endswith(PREVIOUS):
            target = directory / name[1 : -len(PREVIOUS)]
            if target.exists():
                _remove(entry)
            else:
                os.rename(entry, target)
                restored.append(target)
        elif name.endswith(PARTIAL):
            _remove(entry)
    if restored:
        _fsync_dir(directory)
    return restored


def atomic_folder_save(
    write: Callable[[Path], None],
    path: str | Path,
    swapper: bool,
    flusher: bool,
    barrier: Callable[[], None],
) -> Path:
    """Write a sharded checkpoint so that ``path`` always holds a complete one.

    Every process calls it: each ``write`` s its part into the sibling ``.<name>.partial``;
    after a barrier the ``swapper`` renames it over ``path``; a last barrier lets nobody read
    ``path`` before the swap. A process killed at any moment leaves the previous checkpoint
    at ``path`` (or parked beside it, see :func:`recover_folder_swaps`).

    Args:
        write: writes this process's part of the checkpoint into the folder it is given.
        path: the checkpoint folder readers open (e.g. ``checkpoints/last.ckpt``).
        swapper: whether this process does the renames (one process, e.g. global rank 0).
        flusher: whether this process fsyncs the staged files (one per node: the page cache
            that holds what the node's processes wrote).
        barrier: waits for all processes.
    """
    path = Path(path)
    staged = _sibling(path, PARTIAL)
    if swapper:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(staged)  # left by a save that was killed
    barrier()
    write(staged)
    if flusher and staged.exists():
        _fsync_tree(staged)
    barrier()
    if swapper:
        swap_in(staged, path)
    barrier()
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, fsynced saves and safe loads (see module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Args:
            checkpoint: the state Lightning collected.
            path: the destination file.
            storage_options: unsupported (must be None).
        """
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read a checkpoint with ``weights_only=True`` whatever the caller asked for.

        Args:
            path: the checkpoint file.
            map_location: as for ``torch.load``.
            weights_only: ignored: user files are never fully unpickled.
        """
        from lit_unitscale.checkpoints.load import safe_load

        checkpoint = safe_load(path, map_location=map_location)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointFileError(f"checkpoint {path}: not a Lightning checkpoint")
        return checkpoint
