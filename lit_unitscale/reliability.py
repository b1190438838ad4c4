"""Callbacks every run gets unless its recipe configures its own: atomic checkpoint files, a
final ``last.ckpt``, a clean stop on Ctrl-C/SIGTERM, and a stop on non-finite loss or
gradients."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
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


class FinalCheckpoint(L.Callback):
    """Write ``last.ckpt`` when training ends between two of ModelCheckpoint's saves (a
    ``max_steps`` that is not a multiple of ``every_n_train_steps``): without it ``last.ckpt``
    holds an earlier step, and evaluation or a fine-tuning run that reads it gets old weights."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lit_unitscale.callbacks.signals import checkpoint_path

        keeping = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.save_last]
        if not keeping or trainer.global_step == 0:
            return
        # Lightning records the step of its latest save; compare before writing again.
        if all(getattr(c, "_last_global_step_saved", -1) == trainer.global_step for c in keeping):
            return
        path = checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        for callback in keeping:
            callback.last_model_path = str(path)
            callback._last_global_step_saved = trainer.global_step


def default_callbacks(existing: Iterable[L.Callback]) -> list[L.Callback]:
    """The reliability callbacks whose type is not already among ``existing``.

    Args:
        existing: the trainer's callbacks (from the recipe).
    """
    from lit_unitscale.callbacks.nonfinite import NonFiniteGuard
    from lit_unitscale.callbacks.signals import GracefulStop

    have = {type(c) for c in existing}
    wanted = [AtomicCheckpoints(), FinalCheckpoint(), GracefulStop(), NonFiniteGuard()]
    return [c for c in wanted if not any(issubclass(h, type(c)) for h in have)]
