"""Ctrl-C and SIGTERM during training: finish the current optimizer step, write a checkpoint,
stop.

The handler only records the signal. The stop is decided at accumulation boundaries only (the
end of a micro-batch that ran the optimizer step), so the checkpoint never holds j of k
micro-batches marked consumed with their gradients dropped, and the data position in it is
exact. Under several processes every rank must stop at the same step: each boundary starts a
non-blocking all-reduce of the local flag and reads the one started at the previous boundary,
which has long finished, so ranks agree one optimizer step after the signal without the
training step ever waiting on the host. A second signal stops at once, as the default handler
would.

DataLoader workers share the process group, so SLURM's SIGTERM (and a terminal's Ctrl-C) reach
them too; every loader's workers ignore both, so they keep serving batches until the
checkpoint is written (they still exit when the main process does).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

# The last stop a GracefulStop made in this process: {"signal", "step", "path"} (read by the CLI).
last_stop: dict[str, Any] | None = None

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``--ckpt_path last`` will look: ModelCheckpoint's ``last.ckpt``.

    Args:
        trainer: the running trainer.
    """
    callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if callback is not None and callback.dirpath:
        name = callback.CHECKPOINT_NAME_LAST or "last"
        return Path(callback.dirpath) / f"{name}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class IgnoreStopSignals:
    """A DataLoader ``worker_init_fn`` that makes the worker ignore SIGINT and SIGTERM, then
    runs the loader's own ``worker_init_fn`` (a class, so spawn/forkserver workers can pickle it).

    Args:
        inner: the loader's previous ``worker_init_fn`` (None: none).
    """

    def __init__(self, inner: Callable[[int], None] | None = None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def protect_workers(loader: Any) -> Any:
    """Give ``loader``'s workers :class:`IgnoreStopSignals` (idempotent); returns ``loader``.

    Args:
        loader: a DataLoader (anything else is returned unchanged).
    """
    if isinstance(loader, DataLoader) and not isinstance(loader.worker_init_fn, IgnoreStopSignals):
        loader.worker_init_fn = IgnoreStopSignals(loader.worker_init_fn)
    return loader


class _Agreement:
    """An all-ranks OR of a local flag, started now and read later without a blocking sync.

    On CUDA the reduced flag is copied to pinned host memory behind the collective on the
    device's stream, and an event marks the copy: reading waits for that event only, never for
    work queued after it. On CPU (gloo) the collective runs on gloo's thread and reading waits
    for it.
    """

    def __init__(self, flag: bool, device: torch.device) -> None:
        import torch.distributed as dist

        value = torch.full((1,), float(flag), device=device)  # a fill, not a host copy
        self._work = dist.all_reduce(value, op=dist.ReduceOp.MAX, async_op=True)
        self._value = value
        self._event = None
        if device.type == "cuda":
            self._work.wait()  # orders the stream after the collective; the host goes on
            self._value = torch.empty(1, pin_memory=True)
            self._value.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> bool:
        """Whether any rank's flag was set."""
        if self._event is not None:
            self._event.synchronize()
        else:
            self._work.wait()
        return bool(self._value.numpy()[0] > 0)  # host memory: no device round trip


class GracefulStop(L.Callback):
    """On SIGINT/SIGTERM: save ``last.ckpt`` at the next optimizer-step boundary that all ranks
    agree on, and stop training (the CLI then exits 128 + the signal number).

    Args:
        signals: signal names to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGINT", "SIGTERM")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._pending: _Agreement | None = None
        self._step_at_start = -1

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: stop now, like the default handler
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning(
            "received %s: saving a checkpoint after this optimizer step (send it again to stop "
            "at once)",
            signal.Signals(signum).name,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning hands every loader (training, validation, test, after its own sampler
        # injection, which rebuilds loaders and would drop an attribute set earlier) to
        # strategy.process_dataloader just before its workers start.
        strategy = trainer.strategy
        process = strategy.process_dataloader
        if getattr(process, "protects_workers", False):
            return

        def process_dataloader(dataloader: Any) -> Any:
            return protect_workers(process(dataloader))

        process_dataloader.protects_workers = True  # type: ignore[attr-defined]
        strategy.process_dataloader = process_dataloader

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(trainer.strategy.process_dataloader, "protects_workers", False):
            del trainer.strategy.process_dataloader

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own SIGTERM handler (registered before this hook): ours replaces it,
        # so Lightning does not abort the loop before the checkpoint is written.
        self.received, self._pending = None, None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step

    def _agreed_stop(self, trainer: L.Trainer) -> bool:
        local = self.received is not None
        if trainer.world_size == 1:
            return local
        pending, self._pending = self._pending, None
        if pending is not None and pending.result():
            return True  # every rank read the same collective: all stop here
        self._pending = _Agreement(local, trainer.strategy.root_device)
        return False

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._step_at_start:
            return  # mid-accumulation: the micro-batches so far live only in the gradients
        if not self._agreed_stop(trainer) or trainer.should_stop:
            return
        global last_stop
        from lit_unitscale.callbacks.checkpointing import record_last_save

        path = checkpoint_path(trainer)
        record_last_save(trainer, path)
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        name = signal.Signals(self.received).name if self.received else "SIGTERM"
        last_stop = {"signal": name, "step": trainer.global_step, "path": str(path)}

    def _finish(self) -> None:
        if self._pending is not None:  # a collective every rank started: complete it
            self._pending.result()
            self._pending = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish()
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._pending = None  # other ranks may be gone: do not wait on them
        self._restore()
