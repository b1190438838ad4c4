"""Ctrl-C and SIGTERM during training: finish the current step, write a checkpoint, stop.

The handler only records the signal; the checkpoint is written at the end of the training step
(where ModelCheckpoint also saves, so the state is consistent and the data position in the
checkpoint is exact). A second signal stops at once, as the default handler would.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

# The last stop a GracefulStop made in this process: {"signal", "step", "path"} (read by the CLI).
last_stop: dict[str, Any] | None = None


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


class GracefulStop(L.Callback):
    """On SIGINT/SIGTERM: save ``last.ckpt`` after the current step and stop training.

    Args:
        signals: signal names to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGINT", "SIGTERM")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: stop now, like the default handler
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning(
            "received %s: saving a checkpoint after this step (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own SIGTERM handler (registered before this hook): ours replaces it,
        # so Lightning does not abort the loop before the checkpoint is written.
        if threading.current_thread() is not threading.main_thread():
            return
        self.received = None
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank must save and stop together
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or trainer.should_stop:
            return
        global last_stop
        path = checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        name = signal.Signals(self.received).name if self.received else "SIGTERM"
        last_stop = {"signal": name, "step": trainer.global_step, "path": str(path)}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
