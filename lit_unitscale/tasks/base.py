"""The shared LightningModule: model built from a TransformerConfig, u-μP optimizer groups,
LR schedule, global-batch gradient scaling, FSDP2 sharding hook, checkpointed model config."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from lit_unitscale.callbacks.logging_steps import is_logging_step
from lit_unitscale.checkpoints.tokenizer import store_tokenizer
from lit_unitscale.errors import CheckpointMismatchError, RecipeError
from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.models.activation_checkpointing import checkpoint_blocks
from lit_unitscale.tasks.schedule import Schedule, lr_factor
from lit_unitscale.tasks.task_data import TaskData
from lit_unitscale.unit import global_batch, param_groups
from lit_unitscale.unit.clipping import GradientClipRule, clip_gradients, numel, rule_for

SPLITS = ("val", "test")


class UnitScaledTask(L.LightningModule):
    """Base of every task. Subclasses set ``architecture`` and implement ``loss`` (training),
    ``split_metrics`` and ``evaluate`` (validation and test); the base trains, logs and
    checkpoints them alike.

    Args:
        model: architecture and u-μP hyperparameters; sizes left at 0 (``vocab_size``,
            ``num_labels``) are filled from the data module.
        lr: peak learning rate (u-μP: the base LR before per-parameter multipliers).
        weight_decay: weight decay. u-μP with ``independent_weight_decay``: the fraction weights
            shrink per step at the peak LR (p ← p·(1 − weight_decay·lr_t/lr_peak), whatever the
            LR; torch's 0.1 at lr 1e-3 is 1e-4 here), below 0.01. Otherwise torch AdamW's value.
        betas: AdamW betas.
        eps: AdamW epsilon.
        independent_weight_decay: u-μP only: decay independent of each group's LR (the u-μP
            recommendation); SP always uses torch AdamW's coupled meaning.
        warmup_steps: linear warmup steps.
        schedule: LR decay after warmup.
        min_lr_ratio: final LR as a fraction of the peak.
        compile: wrap the model in ``torch.compile``.
        activation_checkpointing: recompute each block's activations in backward.
        gradient_clip_rule: what ``trainer.gradient_clip_val`` bounds: ``norm`` the global
            norm, ``rms`` the RMS of the whole gradient (unit terms, docs/tuning.md); ``auto``
            is ``rms`` under u-μP and ``norm`` under SP.
    """

    architecture: str = "DecoderLM"
    # Metrics shown on the progress bar during validation (names as logged after "val/").
    prog_bar_metrics: tuple[str, ...] = ("loss",)
    # Log ``<split>/ppl`` = exp(``<split>/loss``) (token-level losses).
    reports_perplexity: bool = False

    def __init__(
        self,
        model: TransformerConfig,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        independent_weight_decay: bool = True,
        warmup_steps: int = 100,
        schedule: Schedule = "cosine",
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        activation_checkpointing: bool = False,
        gradient_clip_rule: GradientClipRule = "auto",
    ) -> None:
        super().__init__()
        if independent_weight_decay and model.parametrization == "umup" and weight_decay >= 0.01:
            raise RecipeError(
                f"weight_decay={weight_decay} under u-μP's independent weight "
                f"decay shrinks weights by {100 * weight_decay:.1f} % every step: give the "
                "per-step decay (torch's 0.1 at lr 1e-3 is 1e-4), or set "
                "independent_weight_decay: false for torch's meaning"
            )
        self.save_hyperparameters()
        self.config = dataclasses.replace(model)
        self.model: nn.Module | None = None
        # {"val": {name: Metric}, "test": {...}}, built with the model (sizes come from data).
        self.metrics: nn.ModuleDict | None = None

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        # u-μP weight gradients have unit RMS by design, so their global norm grows as
        # sqrt(#params): there the threshold bounds the gradient's RMS (unit.clipping).
        rule = rule_for(self.hparams.get("gradient_clip_rule", "auto"), self.config.parametrization)
        if rule == "norm" or not gradient_clip_val or gradient_clip_algorithm == "value":
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
        elif getattr(self.trainer.strategy, "strategy_name", "") == "deepspeed":
            same = gradient_clip_val * numel(self.parameters()) ** 0.5
            raise RecipeError(
                f"gradient_clip_rule {rule}: DeepSpeed clips by global norm only; the same "
                "clipping is model.init_args.gradient_clip_rule: norm with "
                f"trainer.gradient_clip_val: {same:.6g}"
            )
        else:
            clip_gradients(self.parameters(), gradient_clip_val, rule)

    def untrained_copy(self, **overrides: Any) -> UnitScaledTask:
        """A fresh, untrained task of the same class and hyperparameters, with ``overrides``
        (e.g. another ``model`` config or ``lr``): what sweeps and coordinate checks train.

        Args:
            overrides: constructor arguments to change.
        """
        # LightningCLI records private keys such as _class_path beside the real arguments.
        kwargs = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        return type(self)(**{**kwargs, **overrides})

    replicate = untrained_copy  # former name, kept for one release

    @property
    def datamodule(self) -> TaskData | None:
        """The trainer's data module, or None before a trainer is attached or without one."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    @property
    def tokenizer(self) -> Any:
        """The data module's tokenizer, or None."""
        return getattr(self.datamodule, "tokenizer", None)

    # -- model construction -------------------------------------------------------------
    def fill_config_from_data(self) -> None:
        """Take sizes left at 0 from the attached data module (vocab, labels, target vocab)."""
        dm = self.datamodule
        if dm is None:
            return
        updates = {}
        for field, attr in (
            ("vocab_size", "vocab_size"),
            ("num_labels", "num_labels"),
            ("tgt_vocab_size", "tgt_vocab_size"),
        ):
            if not getattr(self.config, field) and hasattr(dm, attr):
                updates[field] = getattr(dm, attr)
        if updates:
            self.config = dataclasses.replace(self.config, **updates)

    def build_model(self) -> nn.Module:
        return ARCHITECTURES[self.architecture](self.config)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.fill_config_from_data()
        mesh = getattr(self, "device_mesh", None) if self._trainer is not None else None
        if mesh is None:
            model = self.build_model()
        else:
            # Sharded: parameters are built on the meta device and only this rank's shards
            # are ever allocated, holding the same values as the single-device build.
            from lit_unitscale.strategies.meta_init import MetaInit

            with MetaInit() as init:
                model = self.build_model()
            init.name_parameters(model)
        if self.hparams.activation_checkpointing:
            checkpoint_blocks(model)
        self.model = model
        if mesh is not None:
            # The strategy applies its own parallelism (FSDP2Strategy: its recipe options).
            parallelize = getattr(self.trainer.strategy, "parallelize", None)
            if parallelize is None:
                from lit_unitscale.strategies.fsdp2 import shard_model

                parallelize = shard_model
            parallelize(self.model, mesh)
            init.materialise(self.model, self.trainer.strategy.root_device)
        if self.hparams.compile:
            self.model.compile()
        if self.metrics is None:
            self.metrics = nn.ModuleDict(
                {split: nn.ModuleDict(self.split_metrics()) for split in SPLITS}
            )

    def setup(self, stage: str) -> None:
        # On x86 CPUs, arithmetic on denormal floats (|x| < 1.2e-38, e.g. decaying Adam moments)
        # runs ~100x slower; measured here it made a u-μP step 5x slower. Such values carry no
        # training signal, so flush them to zero. (No effect where unsupported, e.g. on GPUs.)
        torch.set_flush_denormal(True)
        self._declare_global_batch()

    def _declare_global_batch(self) -> None:
        """Weight-gradient scales count the global batch (see unit.global_batch): the processes
        whose gradients are averaged (data-parallel ranks, not tensor-parallel ones) times the
        micro-batches accumulated into this step."""
        if self._trainer is None or self.config.parametrization != "umup":
            return
        replicas = self.trainer.world_size
        mesh = getattr(self, "_device_mesh", None)  # ModelParallelStrategy: (dp, tp) mesh
        if mesh is not None and "data_parallel" in (mesh.mesh_dim_names or ()):
            replicas = mesh["data_parallel"].size()
        global_batch.set_data_parallel(replicas, self.trainer.accumulate_grad_batches)

    def configure_callbacks(self) -> list[L.Callback]:
        # Resumable data order (sampler epoch and position in checkpoints) for every task.
        # Atomic checkpoints, clean Ctrl-C/SIGTERM, non-finite guard, unless the recipe has them.
        from lit_unitscale.callbacks.checkpointing import default_callbacks
        from lit_unitscale.callbacks.resumable_sampling import ResumableSampling

        existing = self.trainer.callbacks if self._trainer is not None else []
        return [ResumableSampling(), *default_callbacks(existing)]

    def teardown(self, stage: str) -> None:
        global_batch.set_data_parallel(1, 1)

    # -- checkpoints carry the resolved config so the model can be rebuilt anywhere -------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.config.to_dict()
        checkpoint["architecture"] = self.architecture
        store_tokenizer(checkpoint, self.datamodule)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("model_config")
        if saved is None:
            return
        saved_config = TransformerConfig.from_dict(saved)
        if self.model is None:
            self.config = saved_config
            self.configure_model()
        elif saved_config != self.config:
            diff = {
                k: (v, getattr(self.config, k))
                for k, v in saved.items()
                if getattr(self.config, k) != v
            }
            raise CheckpointMismatchError(
                "checkpoint architecture does not match the recipe (checkpoint/recipe): "
                + ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items())
            )

    # -- optimization ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(
            self.model,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            parametrization=self.config.parametrization,
            independent_weight_decay=hp.independent_weight_decay,
        )
        # A strategy that runs the step elsewhere (DeepSpeed's offload: on the host) supplies
        # the AdamW suited to it, over the same u-μP groups.
        strategy = self.trainer.strategy if self._trainer is not None else None
        adamw = getattr(strategy, "adamw", None)
        if adamw is None:
            adamw = torch.optim.AdamW
        optimizer = adamw(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total and total != float("inf") else hp.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, total, hp.warmup_steps, hp.schedule, hp.min_lr_ratio),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A GradientAccumulationScheduler changes accumulate_grad_batches between epochs.
        self._declare_global_batch()
        # The base LR after the schedule; each group's LR is this times its u-μP multiplier.
        # Logged only when Lightning writes logs: a Python float becomes a device tensor, a
        # copy that would make the host wait on the device every micro-batch.
        sched = self.lr_schedulers()
        if sched is not None and is_logging_step(self.trainer):
            factor = sched.lr_lambdas[0](sched.last_epoch)
            self.log("lr", self.hparams.lr * factor, on_step=True, batch_size=1)

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``train/loss`` without reading it back to the host: it stays a device tensor
        until loggers receive it at logging steps.

        Args:
            loss: the micro-batch's loss, a device tensor.
            batch_size: examples in the micro-batch.
        """
        # Not a progress-bar value: Lightning turns every one of those into a Python float
        # after each micro-batch, even one logged steps ago.
        self.log("train/loss", loss, batch_size=batch_size)

    # -- training: subclasses implement loss(batch) -----------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one micro-batch (a device tensor).

        Args:
            batch: the collated micro-batch (``input_ids`` first dimension = examples).
        """
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_train_loss(loss, batch["input_ids"].shape[0])
        return loss

    # -- evaluation: subclasses implement split_metrics() and evaluate(batch, split) ---------
    def split_metrics(self) -> dict[str, Metric]:
        """Fresh metrics for one split, keyed by the name they are logged under (a metric
        whose ``compute`` returns a dict logs each entry under its own name)."""
        raise NotImplementedError

    def evaluate(self, batch: Any, split: str) -> None:
        """Update the ``split`` ("val" or "test") metrics with one batch."""
        raise NotImplementedError

    def metric(self, split: str, name: str) -> Metric:
        """One metric of a split.

        Args:
            split: "val" or "test".
            name: the metric's name in :meth:`split_metrics`.
        """
        return self.metrics[split][name]

    def log_split(self, split: str) -> None:
        """Compute, log as ``<split>/<name>`` and reset the ``split`` metrics.

        Args:
            split: "val" or "test".
        """
        # torchmetrics' compute() reduces across processes; the values are then global.
        values: dict[str, torch.Tensor] = {}
        for name, metric in self.metrics[split].items():
            value = metric.compute()
            items = value.items() if isinstance(value, dict) else [(name, value)]
            values.update({f"{split}/{key}": v for key, v in items})
            metric.reset()
        if self.reports_perplexity:
            values[f"{split}/ppl"] = torch.exp(values[f"{split}/loss"])
        shown = {f"{split}/{name}" for name in self.prog_bar_metrics} if split == "val" else ()
        self.log_dict({k: v for k, v in values.items() if k not in shown}, sync_dist=False)
        bar = {k: v for k, v in values.items() if k in shown}
        if bar:
            self.log_dict(bar, prog_bar=True, sync_dist=False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_split("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_split("test")
