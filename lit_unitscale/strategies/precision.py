"""Precision plugins unit scaling makes possible, and the strategy × precision rules.

- :class:`FP16NoScalePrecision`: fp16 autocast with fp32 master weights and **no loss scaler**.
  Unit-scaled gradients sit near RMS 1, inside fp16's range, so nothing needs rescaling.
  (Lightning's ``16-mixed`` always adds a GradScaler, and silently becomes bf16 on CPU.)
- :class:`FP8SimPrecision`: FP8 simulation (E4M3 matmul inputs, E5M2 matmul output gradients)
  on top of ``32-true``, ``bf16-mixed`` or ``bf16-true``.
- :class:`FP8Precision`: real FP8 GEMMs (``torch._scaled_mm``) in every hidden linear, static
  unit scales, FP8 casts saved for backward, on top of the same bases.

:func:`check_precision` refuses the combinations that cannot work and says why; our strategies
call it when the Trainer is built, before any process is launched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from lightning.pytorch.plugins.precision import (
    DeepSpeedPrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)
from torch import Tensor

from lit_unitscale.errors import RecipeError
from lit_unitscale.unit.modules import simulate_fp8_matmuls, use_fp8_matmuls

FP8Base = Literal["32-true", "bf16-mixed", "bf16-true"]


class PrecisionError(RecipeError):
    """A strategy × precision combination that cannot work; the message names the reason."""


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class FP16NoScalePrecision(MixedPrecision):
    """fp16 autocast (``torch.autocast(device, dtype=float16)``), fp32 weights and optimizer
    state, no GradScaler.

    Args:
        device: autocast device type, ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    """

    def __init__(self, device: str = "auto") -> None:
        super().__init__("16-mixed", _resolve_device(device), scaler=None)
        # MixedPrecision creates a GradScaler for 16-mixed; unit scaling does not need one.
        self.scaler = None


def _make_base(base: str, device: str) -> Precision:
    if base == "32-true":
        return Precision()
    if base == "bf16-mixed":
        return MixedPrecision("bf16-mixed", _resolve_device(device))
    if base == "bf16-true":
        return HalfPrecision("bf16-true")
    raise PrecisionError(f"fp8: base must be 32-true, bf16-mixed or bf16-true, got {base!r}")


class _OnBase(Precision):
    """A precision that adds to a base precision and otherwise does what the base does."""

    def __init__(self, base: FP8Base = "32-true", device: str = "auto") -> None:
        self.base = _make_base(base, device)
        self.base_precision = base
        self.precision = base

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.base.convert_module(module)

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        return self.base.tensor_init_context()

    def module_init_context(self) -> contextlib.AbstractContextManager:
        return self.base.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return self.base.convert_input(data)

    def convert_output(self, data: Any) -> Any:
        return self.base.convert_output(data)

    def forward_context(self) -> contextlib.AbstractContextManager:
        return self.base.forward_context()

    def pre_backward(self, tensor: Tensor, module: Any) -> Tensor:
        return self.base.pre_backward(tensor, module)

    def backward(self, tensor: Tensor, model: Any, optimizer: Any, *args: Any, **kwargs: Any):
        return self.base.backward(tensor, model, optimizer, *args, **kwargs)

    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:
        return self.base.optimizer_step(optimizer, model, closure, **kwargs)

    def clip_gradients(self, *args: Any, **kwargs: Any) -> None:
        return self.base.clip_gradients(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)


class FP8SimPrecision(_OnBase):
    """FP8 simulation on every unit matmul, on top of a base precision.

    Every module that multiplies (linears, readouts, attention's products) is set to simulate
    when the strategy converts the model (:func:`lit_unitscale.unit.simulate_fp8_matmuls`), as
    :class:`FP8Precision` sets real FP8: the choice travels with the modules, so recomputed
    forwards (activation checkpointing) and sharded or compiled models simulate too.

    Args:
        base: precision underneath the simulation: ``32-true``, ``bf16-mixed`` or ``bf16-true``.
        device: autocast device type for ``bf16-mixed`` (``"auto"``: CUDA when available).
    """

    adds = "FP8 simulation"

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = self.base.convert_module(module)
        simulate_fp8_matmuls(module)
        return module


class FP8Precision(_OnBase):
    """Real FP8 matmuls in every hidden linear (attention's projections, the MLP's), on top of
    a base precision: E4M3 inputs and weights, E5M2 gradients, ``torch._scaled_mm`` with fp32
    accumulation and the unit scales as its scale arguments (static: no amax).

    Embeddings, readouts and attention's own products stay in the base precision. The choice
    is set on the modules when the strategy converts the model
    (:func:`lit_unitscale.unit.use_fp8_matmuls`), so it holds inside FSDP2, ZeRO and
    ``torch.compile``, and in recomputed forwards.

    Args:
        base: precision underneath: ``32-true`` (CPU), ``bf16-mixed`` (GPU) or ``bf16-true``.
        device: autocast device type for ``bf16-mixed`` (``"auto"``: CUDA when available).
        exclude: glob patterns of module names kept in the base precision (e.g.
            ``"*.layers.0.*"`` for the first block).
    """

    adds = "FP8 matmuls"

    def __init__(
        self, base: FP8Base = "32-true", device: str = "auto", exclude: list[str] | None = None
    ) -> None:
        super().__init__(base, device)
        self.exclude = tuple(exclude or ())

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = self.base.convert_module(module)
        use_fp8_matmuls(module, self.exclude)
        return module


class DeepSpeedAccumulationPrecision(DeepSpeedPrecision):
    """Lightning's DeepSpeed precision, with the loss divided by the accumulation count once.

    Lightning already divides each micro-batch loss by ``accumulate_grad_batches``; DeepSpeed's
    ``engine.backward`` divides by ``gradient_accumulation_steps`` again, so with k > 1 the
    optimizer would see gradients k times too small (Adam hides it; the u-μP gradient RMS, SGD
    and gradient clipping do not). Backward here asks DeepSpeed not to rescale.

    Args:
        precision: ``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed`` or ``16-true``.
    """

    def backward(self, tensor: Tensor, model: Any, optimizer: Any, *args: Any, **kwargs: Any):
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(tensor, model, optimizer, *args, **kwargs)


class DeepSpeedFP8SimPrecision(DeepSpeedAccumulationPrecision):
    """:class:`FP8SimPrecision` for DeepSpeed, whose engine owns backward and the step.

    Args:
        base: DeepSpeed precision underneath: ``32-true``, ``bf16-mixed`` or ``bf16-true``.
    """

    adds = "FP8 simulation"

    def __init__(self, base: FP8Base = "32-true") -> None:
        super().__init__(base)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().convert_module(module)
        simulate_fp8_matmuls(module)
        return module


class DeepSpeedFP8Precision(DeepSpeedAccumulationPrecision):
    """:class:`FP8Precision` for DeepSpeed: the same modules multiply in FP8 inside the engine.

    Args:
        base: DeepSpeed precision underneath: ``32-true``, ``bf16-mixed`` or ``bf16-true``.
        exclude: glob patterns of module names kept in the base precision.
    """

    adds = "FP8 matmuls"

    def __init__(self, base: FP8Base = "32-true", exclude: tuple[str, ...] = ()) -> None:
        super().__init__(base)
        self.exclude = tuple(exclude)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().convert_module(module)
        use_fp8_matmuls(module, self.exclude)
        return module


def check_precision(strategy_name: str, plugin: Precision, accelerator: str) -> None:
    """Raise :class:`PrecisionError` for a combination that cannot work.

    Args:
        strategy_name: ``ddp``, ``fsdp2`` or ``deepspeed`` (the family of the strategy).
        plugin: the precision plugin the Trainer resolved.
        accelerator: ``cpu`` or ``gpu``/``cuda``.
    """
    precision = getattr(plugin, "precision", "32-true")
    if isinstance(plugin, FP16NoScalePrecision) and strategy_name == "deepspeed":
        raise PrecisionError(
            "fp16-noscale cannot run under DeepSpeed: DeepSpeed keeps fp16 weights and drives its "
            "own loss scaler instead of autocast. Use bf16-mixed with DeepSpeed, fp16-noscale with "
            "ddp or fsdp, or on GPUs Lightning's precision=16-mixed with the DeepSpeed strategy's "
            "loss_scale: 1.0 (a static scale of 1, i.e. no scaling)."
        )
    if precision == "16-true" and not isinstance(plugin, FP16NoScalePrecision):
        raise PrecisionError(
            "precision=16-true keeps the AdamW state in fp16, where eps underflows and the loss "
            "is NaN from the second step. Use recipes/precision/fp16-noscale.yaml (fp16 autocast, "
            "fp32 master weights, no loss scaler)."
        )
    if strategy_name == "deepspeed" and isinstance(plugin, FP8SimPrecision | FP8Precision):
        return  # swapped for its DeepSpeed twin by the DeepSpeed strategy
    if strategy_name == "deepspeed" and not isinstance(plugin, DeepSpeedPrecision):
        raise PrecisionError(
            f"{type(plugin).__name__} cannot drive DeepSpeed: the engine owns backward and the "
            "optimizer step. Use trainer.precision (32-true, bf16-mixed, bf16-true) or fp8-sim."
        )
