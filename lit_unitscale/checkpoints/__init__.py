"""Checkpoints: the one place that saves atomically, loads without unpickling, consolidates
shards and stores the tokenizer.

- ``atomic.py``: files and sharded folders written beside the last good checkpoint and swapped
  in (``atomic_torch_save``, ``atomic_folder_save``, Lightning's ``AtomicCheckpointIO``).
- ``load.py``: ``safe_load`` of any file, ``load_checkpoint`` of any format our strategies write
  (one file, FSDP2 distributed checkpoint, DeepSpeed ZeRO), ``consolidate_checkpoint``.
- ``tokenizer.py``: the run's ``tokenizer.json`` inside its checkpoints.
"""

from lit_unitscale.checkpoints.atomic import (
    AtomicCheckpointIO,
    atomic_folder_save,
    atomic_torch_save,
    recover_folder_swaps,
    swap_in,
)
from lit_unitscale.checkpoints.load import (
    check_deepspeed_world_size,
    checkpoint_kind,
    consolidate_checkpoint,
    deepspeed_saved_world_size,
    load_checkpoint,
    safe_globals,
    safe_load,
)
from lit_unitscale.checkpoints.tokenizer import store_tokenizer, stored_tokenizer

__all__ = [
    "AtomicCheckpointIO",
    "atomic_folder_save",
    "atomic_torch_save",
    "check_deepspeed_world_size",
    "checkpoint_kind",
    "consolidate_checkpoint",
    "deepspeed_saved_world_size",
    "load_checkpoint",
    "recover_folder_swaps",
    "safe_globals",
    "safe_load",
    "store_tokenizer",
    "stored_tokenizer",
    "swap_in",
]
