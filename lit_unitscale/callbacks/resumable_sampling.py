"""Resumable data order: a seeded, rank-aware sampler whose epoch and global position go into
the checkpoint, so a resumed run sees exactly the examples an uninterrupted one would, on any
number of processes.

Lightning swaps in a ``DistributedSampler`` when there are several processes (and keeps the
loader's ``RandomSampler`` otherwise); neither remembers where it stopped, so a run resumed
mid-epoch starts the epoch again, and after an epoch boundary the permutation differs.
:class:`ResumableSampling` gives the data module's training loader a :class:`ResumableSampler`
and saves ``(epoch, samples consumed)`` with the checkpoint. The position is global: each epoch
has one seeded order of the dataset, the micro-batch ``b`` of all W processes together is the
contiguous slice ``[b·B·W, (b+1)·B·W)`` of it, whatever W is, and the checkpoint records how
many examples of the order are consumed. A run resumed on W' processes deals the rest of the
order round-robin over W', so every example is seen exactly once per epoch (plus the repeats
``DistributedSampler`` also pads the epoch's end with). On the same W the resumed order is the
uninterrupted one exactly. It works for any map-style dataset whose loader uses the default
batch sampler; other loaders are left alone.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler``'s order (``randperm`` seeded by ``seed + epoch``, padded to a
    multiple of ``num_replicas`` by repeating its start, dealt round-robin) that can start at
    a global position of the epoch's order.

    With one replica it is the plain seeded permutation. Being a ``DistributedSampler``,
    Lightning keeps it instead of injecting its own.

    Args:
        dataset: the map-style dataset.
        num_replicas: data-parallel processes.
        rank: this process's data-parallel rank.
        shuffle: shuffle each epoch (False: dataset order).
        seed: base seed of the shuffle.
        epoch: epoch of the first iteration.
        start: examples of the epoch's global order already consumed (by any number of
            processes), skipped in the first iteration.
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        start, self.start = min(self.start, n), 0
        rest = order[start:]
        # Pad with the order's start, as DistributedSampler does: with ``start`` a multiple of
        # num_replicas this is exactly the uninterrupted epoch's tail.
        size = math.ceil(len(rest) / self.num_replicas) * self.num_replicas
        pad = size - len(rest)
        if pad:
            rest = torch.cat([rest, order.repeat(math.ceil(pad / max(n, 1)))[:pad]])
        mine = rest[self.rank : size : self.num_replicas]
        # The order stays one int64 tensor (8 bytes an example: token-shard corpora have
        # millions of blocks); Python ints are made a slice at a time.
        for begin in range(0, len(mine), 8192):
            yield from mine[begin : begin + 8192].tolist()


def _shuffles(sampler: Any) -> bool | None:
    if isinstance(sampler, RandomSampler):
        return True
    if isinstance(sampler, DistributedSampler):
        return bool(sampler.shuffle)
    if isinstance(sampler, SequentialSampler):
        return False
    return None


class ResumableSampling(Callback):
    """Make the training data order resumable (see the module docstring).

    The data module's ``train_dataloader`` is wrapped for the duration of the fit: the loader
    it returns is rebuilt around a :class:`ResumableSampler` that starts where the checkpoint
    being resumed stopped.

    Args:
        seed: shuffle seed; None takes the data module's ``seed`` attribute, else the global
            seed (``seed_everything``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.epoch = 0
        self.samples = 0
        self._micro_batch = 0  # examples of one micro-batch over all processes (B·W)
        self._saved_micro_batch = 0  # the same in the run that wrote the resumed checkpoint
        self._legacy_batches: int | None = None
        self._original: Callable[[], Any] | None = None

    # -- state saved in the checkpoint -----------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.samples, "micro_batch": self._micro_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = int(state_dict.get("epoch", 0))
        self.samples = int(state_dict.get("samples", 0))
        self._saved_micro_batch = int(state_dict.get("micro_batch", 0))
        if "samples" not in state_dict:  # older checkpoints: this rank's batches
            self._legacy_batches = int(state_dict.get("consumed", 0))

    # -- loader wrapping -------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or self._original is not None:
            return
        self._original = datamodule.train_dataloader
        # Lightning cannot see that this loader resumes mid-epoch; its warning would mislead.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before"
        )

        def train_dataloader() -> Any:
            return self._resumable(self._original(), trainer)

        datamodule.train_dataloader = train_dataloader

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._original is not None and trainer.datamodule is not None:
            del trainer.datamodule.train_dataloader  # the instance attribute set in setup
            self._original = None

    def _seed(self, trainer: L.Trainer) -> int:
        if self.seed is not None:
            return self.seed
        seed = getattr(trainer.datamodule, "seed", None)
        return int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _resumable(self, loader: Any, trainer: L.Trainer) -> Any:
        from lightning.pytorch.trainer.states import RunningStage
        from lightning.pytorch.utilities.data import _update_dataloader

        if not isinstance(loader, DataLoader) or type(loader.batch_sampler) is not BatchSampler:
            return loader
        shuffle = _shuffles(loader.batch_sampler.sampler)
        try:
            len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            return loader
        if shuffle is None:
            return loader
        kwargs = trainer.strategy.distributed_sampler_kwargs if trainer.world_size > 1 else {}
        replicas = int(kwargs.get("num_replicas", 1))
        self._micro_batch = loader.batch_sampler.batch_size * replicas
        if self._legacy_batches is not None:  # written by a run of the same shape
            self.samples = self._legacy_batches * self._micro_batch
            self._saved_micro_batch, self._legacy_batches = self._micro_batch, None
        sampler = ResumableSampler(
            loader.dataset,
            num_replicas=replicas,
            rank=int(kwargs.get("rank", 0)),
            shuffle=shuffle,
            seed=self._seed(trainer),
            epoch=self.epoch,
            start=self.samples,
        )
        return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)

    # -- position tracking -----------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._saved_micro_batch = self._saved_micro_batch, 0
        if not saved or not self._micro_batch or saved == self._micro_batch:
            return
        # Resumed with another world size or batch: Lightning restored its count of this
        # epoch's micro-batches in the old shape; accumulation boundaries and the epoch's end
        # are counted from it, so restate it in the new shape (the checkpoint was written at an
        # optimizer-step boundary, so the next micro-batch starts a step).
        k = max(1, trainer.accumulate_grad_batches)
        done = self.samples // self._micro_batch // k * k
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        shift = done - progress.ready  # all counters alike: Lightning reads their differences
        progress.ready += shift
        progress.started += shift
        progress.processed += shift
        progress.completed += shift

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.samples = trainer.current_epoch, 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.samples += self._micro_batch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint written after the epoch resumes at the start of the next one.
        self.epoch, self.samples = trainer.current_epoch + 1, 0
