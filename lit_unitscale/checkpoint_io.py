"""Checkpoint files written atomically and read without unpickling arbitrary objects.

Saving writes a temporary file in the checkpoint's own directory, fsyncs it, then
``os.replace``s it over the target (and fsyncs the directory), so a crash, ``kill -9`` or full
disk at any moment leaves either the previous checkpoint or the new one, never half a file.
Lightning's own ``_atomic_save`` stages through fsspec's temporary file in ``/tmp`` (another
filesystem on many clusters, so the final move is a copy) and never fsyncs.

Loading always uses ``torch.load(weights_only=True)`` with the few plain classes our
checkpoints hold allow-listed, and turns a truncated or corrupt file into one clear error.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
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


def safe_globals() -> list[Any]:
    """Plain classes our checkpoints legitimately contain (the model config in hparams)."""
    from lit_unitscale.models.config import TransformerConfig

    return [TransformerConfig]


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


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a user's file, with a clear error if it is bad.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"checkpoint {path}: file not found")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointFileError(
            f"checkpoint {path}: refused by the safe loader (weights_only): {reason}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointFileError(
            f"checkpoint {path}: truncated or corrupt ({reason}); "
            "use an earlier checkpoint or start without --ckpt_path"
        ) from None


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
        checkpoint = safe_torch_load(path, map_location=map_location)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointFileError(f"checkpoint {path}: not a Lightning checkpoint")
        return checkpoint
