"""The console of a run: a progress bar over optimizer steps and a short block at the start."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from lit_unitscale.callbacks.logging_steps import is_logging_step


class StepProgressBar(RichProgressBar):
    """Rich progress bar counting optimizer steps toward ``max_steps`` (so its time-left column
    is the run's), with the training loss and the ``tok/s`` that
    :class:`~lit_unitscale.callbacks.Throughput` logs, as of the latest logging step.
    Without ``max_steps`` it counts the epoch's batches, as Lightning's does.

    Args:
        leave: keep finished bars on screen.
    """

    def __init__(self, leave: bool = False) -> None:
        super().__init__(leave=leave)
        self._shown: dict[str, Any] | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        # Every value Lightning hands a progress bar is read back from the device when asked
        # for; while training, ask only at logging steps, where the loggers read them anyway.
        if trainer.training and not is_logging_step(trainer):
            return self._shown or {}
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's run id: noise beside the losses
        for key, name in (("train/loss", "loss"), ("perf/tokens_per_s", "tok/s")):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                metrics[name] = f"{float(value):.4g}"
        self._shown = metrics
        return metrics

    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        text = f"step (epoch {current_epoch})"
        return f"{text:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps():
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        description = self._get_train_description(trainer.current_epoch)
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, description)
        else:
            self.progress.update(self.train_progress_bar_id, description=description)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self.on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class RunSummary(L.Callback):
    """At the start of ``fit``, one short block: run directory, model kind and size, tokens per
    optimizer step, precision, strategy and W&B mode (rank 0 only)."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print("\n".join(summary_lines(trainer, pl_module)), flush=True)


def summary_lines(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    """The lines :class:`RunSummary` prints.

    Args:
        trainer: the trainer, set up for fitting.
        pl_module: the task (its ``config`` and ``model`` are read when present).
    """
    model = getattr(pl_module, "model", None) or pl_module
    params = sum(p.numel() for p in model.parameters())
    config = getattr(pl_module, "config", None)
    kind = type(model).__name__
    shape = ""
    if config is not None:
        kind += f" ({config.parametrization})"
        shape = (
            f": d_model {config.d_model}, {config.n_layers} layers, {config.n_heads} heads, "
            f"max_seq_len {config.max_seq_len}"
        )
    data = trainer.datamodule
    batch = getattr(data, "batch_size", None)
    seq = getattr(data, "seq_len", None)
    replicas, accumulate = trainer.world_size, trainer.accumulate_grad_batches
    if batch and seq:
        tokens = batch * seq * replicas * accumulate
        per_step = (
            f"{batch} x {seq} tokens x {replicas} process(es) x {accumulate} accumulated "
            f"= {tokens:,} tokens per optimizer step (padding included)"
        )
    else:
        per_step = f"{batch} examples x {replicas} process(es) x {accumulate} accumulated"
    wandb = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
    if wandb:
        mode = "offline" if getattr(wandb[0], "_offline", False) else "online"
        logging = f"W&B {mode} in {wandb[0].save_dir}"
    else:
        logging = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
    steps = f"{trainer.max_steps} steps" if trainer.max_steps and trainer.max_steps > 0 else ""
    return [
        f"run       {trainer.default_root_dir}",
        f"model     {kind}, {_count(params)} parameters{shape}",
        f"batch     {per_step}",
        f"numerics  precision {_precision(trainer)}, {type(trainer.strategy).__name__} on "
        f"{trainer.num_nodes} node(s) x {trainer.num_devices} device(s) "
        f"({type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()})"
        + (f", {steps}" if steps else ""),
        f"logging   {logging}",
    ]


def _precision(trainer: L.Trainer) -> str:
    # Plugins that add to a base precision (FP8) say what they add, so the header names both.
    extra = getattr(trainer.precision_plugin, "adds", None)
    return f"{trainer.precision} + {extra}" if extra else str(trainer.precision)
