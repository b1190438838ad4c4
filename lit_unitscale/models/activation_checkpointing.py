"""Activation checkpointing of a model's blocks: each block's activations are recomputed in
backward instead of kept, trading one more forward for memory. One home for every strategy."""

from __future__ import annotations

from torch import nn


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations in backward (blocks already wrapped are left alone).

    Args:
        model: a model with a ``blocks()`` method (every model in :mod:`lit_unitscale.models`).
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
    )

    blocks = {id(b) for b in model.blocks() if not isinstance(b, CheckpointWrapper)}
    if blocks:
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in blocks)
