"""Read any checkpoint our strategies write and consolidate it into one file, without ever
unpickling arbitrary objects.

Formats:

- one file (single process, DDP, FSDP2 with ``save_distributed_checkpoint: false``, or a file
  this module wrote): ``torch.load(weights_only=True)``;
- an FSDP2 folder (torch distributed checkpoint: ``.metadata``, ``__<rank>_0.distcp``,
  Lightning's ``meta.pt``): the metadata is read by an unpickler that admits only the
  checkpoint's own metadata classes, and only the weight tensors are loaded
  (``torch.load(weights_only=True)``);
- a DeepSpeed folder (``latest``, ``checkpoint/*_model_states.pt``, ``*_optim_states.pt``):
  DeepSpeed's own ZeRO merge, with every ``torch.load`` it makes forced to ``weights_only``
  and only DeepSpeed's plain state classes allow-listed.

The consolidated result is a Lightning-style dict: ``state_dict`` (full fp32 weights, keyed as
in the LightningModule), ``model_config``, ``architecture``, ``tokenizer`` (when recorded) and
the run's progress counters.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lit_unitscale.checkpoints.atomic import atomic_torch_save
from lit_unitscale.errors import CheckpointFileError

_META = "meta.pt"
_KEEP = ("model_config", "architecture", "tokenizer", "epoch", "global_step", "hyper_parameters")


def checkpoint_kind(path: str | Path) -> str:
    """``"file"``, ``"fsdp2"`` or ``"deepspeed"``.

    Args:
        path: a checkpoint file or folder.
    """
    path = Path(path)
    if path.is_file():
        return "file"
    if (path / ".metadata").is_file():
        return "fsdp2"
    if (path / "latest").is_file() or (path / "checkpoint").is_dir():
        return "deepspeed"
    raise CheckpointFileError(
        f"checkpoint {path}: not a checkpoint file, FSDP2 folder or DeepSpeed folder"
    )


def safe_globals() -> list[Any]:
    """Plain classes our checkpoints legitimately contain, for ``weights_only`` loads: the model
    config in the hyperparameters and, when DeepSpeed is installed, its ZeRO state records."""
    from lit_unitscale.models.config import TransformerConfig

    allowed: list[Any] = [TransformerConfig]
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        # ZeRO-1/2 optimizer partitions record where each parameter's fragment lies.
        allowed += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    return allowed


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with our checkpoints' plain classes allowed; a
    missing, truncated, corrupt or pickled-object file is one :class:`CheckpointFileError`.

    Args:
        path: a file written by ``torch.save``.
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


# -- FSDP2 (torch distributed checkpoint) ----------------------------------------------------
class _MetadataUnpickler(pickle.Unpickler):
    _MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
    _BUILTINS = {"set", "frozenset", "slice", "tuple", "list", "dict", "int", "float", "bytes"}

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES and not name.startswith("__"):
            obj = getattr(__import__(module, fromlist=[name]), name)
            if isinstance(obj, type):
                return obj
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        if module == "torch.serialization" and name in ("_get_layout",):
            return torch.serialization._get_layout
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath"):
            import pathlib

            return getattr(pathlib, name)
        if module == "builtins" and name in self._BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} in checkpoint metadata")


def _dcp_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            data = (folder / ".metadata").read_bytes()
            metadata = _MetadataUnpickler(io.BytesIO(data)).load()
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    reader = _Reader(str(folder))
    metadata = reader.read_metadata()
    # Only the weights, preallocated from the metadata: no pickled ("bytes") entries are read.
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith("state_dict.") and isinstance(meta, TensorStorageMetadata)
    }
    load(state, storage_reader=reader, no_dist=True)
    return {key.removeprefix("state_dict."): value for key, value in state.items()}


# -- DeepSpeed ----------------------------------------------------------------------------------
class _WeightsOnlyTorch:
    """``torch`` as DeepSpeed's merge script sees it: every ``load`` is ``weights_only``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(*args, **kwargs)


@contextlib.contextmanager
def _weights_only_zero_to_fp32() -> Iterator[Any]:
    from deepspeed.utils import zero_to_fp32

    original = zero_to_fp32.torch
    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = original


def _deepspeed_checkpoint(folder: Path) -> dict[str, Any]:
    tag = (folder / "latest").read_text().strip() if (folder / "latest").is_file() else None
    tag_dir = folder / (tag or "checkpoint")
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    if not model_files:
        raise CheckpointFileError(f"checkpoint {folder}: no DeepSpeed model states under {tag_dir}")
    client = safe_load(model_files[0])
    with _weights_only_zero_to_fp32() as zero_to_fp32:
        weights = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    state = {key.removeprefix("_forward_module."): value for key, value in weights.items()}
    checkpoint = {key: client[key] for key in _KEEP if key in client}
    checkpoint["state_dict"] = state
    return checkpoint


_ZERO_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def deepspeed_saved_world_size(folder: str | Path) -> int | None:
    """The data-parallel processes that wrote a DeepSpeed ZeRO checkpoint (one optimizer
    partition each), or None when the folder holds no ZeRO partitions.

    Args:
        folder: the checkpoint folder (holding ``latest`` and the tag folder).
    """
    folder = Path(folder)
    tag = (folder / "latest").read_text().strip() if (folder / "latest").is_file() else None
    tag_dir = folder / (tag or "checkpoint")
    ranks = {int(m.group(1)) for f in tag_dir.glob("*") if (m := _ZERO_SHARD.search(f.name))}
    return len(ranks) or None


def check_deepspeed_world_size(folder: str | Path, world_size: int) -> None:
    """Refuse, in one line, to resume a ZeRO checkpoint on another number of processes: its
    optimizer state is partitioned by the saving world size, and DeepSpeed reloads only the
    same partitioning unless the checkpoint is converted to a universal checkpoint.

    Args:
        folder: the checkpoint folder.
        world_size: data-parallel processes of this run.
    """
    saved = deepspeed_saved_world_size(folder)
    if saved is None or saved == world_size:
        return
    folder = Path(folder)
    tag = (folder / "latest").read_text().strip() if (folder / "latest").is_file() else "checkpoint"
    raise CheckpointFileError(
        f"checkpoint {folder}: a DeepSpeed ZeRO checkpoint written by {saved} processes cannot "
        f"be resumed on {world_size}; resume on {saved} processes, or convert it to a universal "
        f"checkpoint (python -m deepspeed.checkpoint.ds_to_universal --input_folder "
        f"{folder / tag} --output_folder {folder / (tag + '_universal')} && echo "
        f"{tag}_universal > {folder / 'latest_universal'}) and resume with "
        '"checkpoint": {"load_universal": true} in trainer.strategy.init_args.config'
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A consolidated, Lightning-style dict from any checkpoint our strategies write.

    Args:
        path: a checkpoint file, FSDP2 folder or DeepSpeed folder.
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "file":
        checkpoint = safe_load(path)
        if "state_dict" not in checkpoint:
            raise CheckpointFileError(
                f"checkpoint {path}: no state_dict (not a Lightning checkpoint)"
            )
        return checkpoint
    if kind == "fsdp2":
        meta = safe_load(path / _META) if (path / _META).is_file() else {}
        checkpoint = {key: meta[key] for key in _KEEP if key in meta}
        checkpoint["state_dict"] = _dcp_state_dict(path)
        return checkpoint
    return _deepspeed_checkpoint(path)


def consolidate_checkpoint(path: str | Path, out_file: str | Path) -> Path:
    """Gather a sharded checkpoint (FSDP2 or DeepSpeed) into one ``torch.save`` file that
    :func:`load_checkpoint`, ``export`` and ``torch.load(weights_only=True)`` read.

    Args:
        path: a checkpoint file, FSDP2 folder or DeepSpeed folder.
        out_file: the single file to write.
    """
    checkpoint = load_checkpoint(path)
    keep = {key: checkpoint[key] for key in (*_KEEP, "state_dict") if key in checkpoint}
    keep["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in keep["state_dict"].items()}
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(keep, out)
