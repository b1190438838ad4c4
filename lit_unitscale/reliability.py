"""Callbacks every run gets unless its recipe configures its own: atomic checkpoint files,
a clean stop on Ctrl-C/SIGTERM, and a stop on non-finite loss or gradients."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_unitscale.checkpoint_io import AtomicCheckpointIO


class AtomicCheckpoints(L.Callback):
    """Give the strategy :class:`AtomicCheckpointIO` when it would use Lightning's default.

    Set in ``setup``, which Lightning runs before it restores ``--ckpt_path``, so the resume
    load is safe too. Strategies with their own checkpoint IO (sharded, DeepSpeed) are left alone.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()


def default_callbacks(existing: Iterable[L.Callback]) -> list[L.Callback]:
    """The reliability callbacks whose type is not already among ``existing``.

    Args:
        existing: the trainer's callbacks (from the recipe).
    """
    from lit_unitscale.callbacks.nonfinite import NonFiniteGuard
    from lit_unitscale.callbacks.signals import GracefulStop

    have = {type(c) for c in existing}
    wanted = [AtomicCheckpoints(), GracefulStop(), NonFiniteGuard()]
    return [c for c in wanted if not any(issubclass(h, type(c)) for h in have)]
