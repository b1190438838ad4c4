"""Callbacks every run gets unless its recipe configures its own: atomic checkpoints (single
files and sharded folders), a final ``last.ckpt``, a clean stop on Ctrl-C/SIGTERM at an
optimizer-step boundary, and a stop on non-finite loss or gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import Strategy

from lit_unitscale.checkpoints.atomic import (
    AtomicCheckpointIO,
    atomic_folder_save,
    recover_folder_swaps,
)


def writes_folders(strategy: Strategy) -> bool:
    """Whether ``strategy`` saves a checkpoint as a folder of per-rank shards.

    Args:
        strategy: the trainer's strategy.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return not getattr(strategy, "save_full_weights", False)
    if isinstance(strategy, ModelParallelStrategy):
        return bool(strategy._save_distributed_checkpoint)
    if isinstance(strategy, FSDPStrategy):
        return strategy._state_dict_type == "sharded"
    return False


def _staged_save(strategy: Strategy, save: Callable[..., None]) -> Callable[..., None]:
    """``strategy.save_checkpoint`` writing into a sibling folder that is swapped in."""

    def save_checkpoint(
        checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(strategy.broadcast(str(filepath)))

        def write(staged: Path) -> None:
            save(checkpoint, staged, storage_options=storage_options)

        atomic_folder_save(
            write,
            path,
            swapper=strategy.is_global_zero,
            flusher=strategy.local_rank == 0,
            barrier=strategy.barrier,
        )

    save_checkpoint.staged = True  # type: ignore[attr-defined]
    return save_checkpoint


class AtomicCheckpoints(L.Callback):
    """Make every checkpoint save atomic: single files through :class:`AtomicCheckpointIO`,
    sharded folders (FSDP2, DeepSpeed) through :func:`atomic_folder_save`.

    Set in ``setup``, which Lightning runs before it restores ``--ckpt_path``, so the resume
    load is safe too; there a folder a crash left parked beside its name is put back first.
    Lightning's sharded strategies write in place through their own ``save_checkpoint`` (no
    ``CheckpointIO``), so that method is wrapped for the run.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_unitscale.callbacks.signals import checkpoint_path

        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        if writes_folders(strategy) and not getattr(strategy.save_checkpoint, "staged", False):
            # An instance attribute: Lightning calls strategy.save_checkpoint for every save.
            strategy.save_checkpoint = _staged_save(strategy, strategy.save_checkpoint)
        if strategy.is_global_zero:
            folders = {checkpoint_path(trainer).parent}
            keeping = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
            folders |= {Path(c.dirpath) for c in keeping if c.dirpath}
            for folder in folders:
                recover_folder_swaps(folder)
        strategy.barrier("AtomicCheckpoints.setup")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(trainer.strategy.save_checkpoint, "staged", False):
            del trainer.strategy.save_checkpoint


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
        record_last_save(trainer, path)  # first: the checkpoint carries ModelCheckpoint's state
        trainer.save_checkpoint(path)


def record_last_save(trainer: L.Trainer, path: Path) -> None:
    """Tell every ModelCheckpoint that ``path`` holds this step's ``last.ckpt``, before it is
    written. Otherwise its epoch-end and train-end hooks save again, into ``last-v1.ckpt``
    (after a stop mid-epoch, a checkpoint that records the epoch as finished: a resume would
    skip the rest of it), and a run resumed from ``path`` writes ``last-v1.ckpt`` beside it.

    Args:
        trainer: the running trainer.
        path: the checkpoint about to be written.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback._last_global_step_saved = trainer.global_step
            if callback.save_last:
                callback.last_model_path = str(path)
                callback._last_checkpoint_saved = str(path)


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
