"""DeepSpeed ZeRO (stages 2 and 3, optional CPU offload) that also runs on CPU processes.

Lightning's ``DeepSpeedStrategy`` refuses anything but CUDA. DeepSpeed itself trains on CPU
with gloo; three things stand in the way, and this subclass changes only those:

1. ``setup_environment`` checks for CUDA: on CPU we run DDP's environment setup instead;
2. ``setup_distributed`` validates CUDA device indices: on CPU we skip that check;
3. ``deepspeed.initialize`` is given ``device_rank=root_device.index``, which is None on CPU:
   we pass the local rank.

On every device, gradient accumulation is fixed: Lightning divides the loss by the accumulation
count and DeepSpeed divides it again (see :class:`DeepSpeedAccumulationPrecision`).

On GPUs the behaviour is Lightning's, unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeed

from lit_unitscale.strategies.checks import CheckedStrategy
from lit_unitscale.strategies.precision import (
    DeepSpeedAccumulationPrecision,
    DeepSpeedFP8Precision,
    DeepSpeedFP8SimPrecision,
    FP8Precision,
    FP8SimPrecision,
)


@contextlib.contextmanager
def _device_rank(rank: int) -> Iterator[None]:
    """Within the context, ``deepspeed.initialize(args=Namespace(device_rank=None))`` gets
    ``rank`` instead of None (DeepSpeed compares it with 0)."""
    import deepspeed

    original = deepspeed.initialize

    def initialize(*args: Any, **kwargs: Any):
        namespace = kwargs.get("args")
        if namespace is not None and getattr(namespace, "device_rank", 0) is None:
            namespace.device_rank = rank
        return original(*args, **kwargs)

    deepspeed.initialize = initialize
    try:
        yield
    finally:
        deepspeed.initialize = original


class DeepSpeedStrategy(CheckedStrategy, _LightningDeepSpeed):
    """Lightning's DeepSpeedStrategy, also on CPU; accepts all of its arguments (``stage``,
    ``offload_optimizer``, ``offload_parameters``, ``config``, ``loss_scale``, ...).

    With optimizer offload the step runs on the host: tasks build their optimizer through
    :meth:`adamw`, which gives DeepSpeed's vectorised CPU Adam (same u-μP parameter groups,
    decoupled weight decay as torch AdamW) instead of torch's per-tensor loop. A torch
    optimizer a recipe brings itself is still accepted (``zero_force_ds_cpu_optimizer`` is off
    unless a ``config`` sets it).
    """

    family = "deepspeed"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.config, dict):
            self.config.setdefault("zero_force_ds_cpu_optimizer", False)

    @property
    def offloads_optimizer(self) -> bool:
        """Whether the optimizer state and step live on the host (``offload_optimizer``)."""
        zero = self.config.get("zero_optimization", {}) if isinstance(self.config, dict) else {}
        offload = zero.get("offload_optimizer") or {}
        return offload.get("device", "none") == "cpu"

    def adamw(
        self,
        params: list[dict[str, Any]],
        lr: float,
        betas: tuple[float, float],
        eps: float,
    ) -> torch.optim.Optimizer:
        """AdamW over ``params``: DeepSpeed's CPU Adam (compiled on first use, into
        ``TORCH_EXTENSIONS_DIR``) when the optimizer is offloaded, else torch's.

        Args:
            params: parameter groups, each with its own ``lr`` and ``weight_decay``.
            lr: default learning rate.
            betas: Adam betas.
            eps: Adam epsilon.
        """
        if not self.offloads_optimizer:
            return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=lr, betas=betas, eps=eps, adamw_mode=True)

    @property
    def _on_cuda(self) -> bool:
        return isinstance(self.accelerator, CUDAAccelerator)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        # FP8 simulation must go through DeepSpeed's precision plugin (the engine owns backward).
        # Lightning's own DeepSpeed precision divides the loss by the accumulation count twice.
        plugin = self.precision_plugin
        if isinstance(plugin, FP8SimPrecision):
            self.precision_plugin = DeepSpeedFP8SimPrecision(plugin.base_precision)
        elif isinstance(plugin, FP8Precision):
            self.precision_plugin = DeepSpeedFP8Precision(plugin.base_precision, plugin.exclude)
        elif type(plugin) is DeepSpeedPrecision:
            self.precision_plugin = DeepSpeedAccumulationPrecision(plugin.precision)

    def setup_environment(self) -> None:
        if self._on_cuda:
            return super().setup_environment()
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        if self._on_cuda:
            return super().setup_distributed()
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, *args: Any, **kwargs: Any):
        with _device_rank(self.local_rank):
            return super()._setup_model_and_optimizer(*args, **kwargs)

    def _initialize_deepspeed_inference(self, *args: Any, **kwargs: Any) -> None:
        with _device_rank(self.local_rank):
            return super()._initialize_deepspeed_inference(*args, **kwargs)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        """Lightning's load, refusing in one line a ZeRO checkpoint of another world size
        unless the config loads universal checkpoints.

        Args:
            checkpoint_path: the checkpoint folder.
            weights_only: as for Lightning's ``load_checkpoint``.
        """
        from pathlib import Path

        from lit_unitscale.checkpoints import check_deepspeed_world_size

        config = self.config if isinstance(self.config, dict) else {}
        universal = bool((config.get("checkpoint") or {}).get("load_universal", False))
        full_weights = self.load_full_weights and self.zero_stage_3
        if not universal and not full_weights and Path(checkpoint_path).is_dir():
            check_deepspeed_world_size(checkpoint_path, self.world_size)
        return super().load_checkpoint(checkpoint_path, weights_only)
