"""Autograd Functions whose constant scales ride as arguments of the kernels they launch.

Unit scaling multiplies a tensor by one constant going forward and its gradient by another
going backward. Applied as passes of their own (``scale_fwd``/``scale_bwd``), each constant
costs a read and a write of an activation or its gradient, and often one more tensor kept for
backward. Here each constant is the ``alpha``/``beta`` of the GEMM, the ``alpha`` of the add or
the normaliser of the loss kernel that runs anyway, so u-μP launches the kernels SP does.

The scaled linear is the one home of a unit-scaled matmul: its forward is one GEMM with the
output scale as ``alpha``; its backward is two GEMMs, grad-input and grad-weight, each with its
own scale as ``alpha``. The GEMM itself is a choice (:data:`Gemm`): :func:`addmm_gemm` for fp32,
bf16 and fp16. A real-FP8 GEMM plugs in at the same seam: ``torch._scaled_mm(a8, b8, scale_a,
scale_b)`` multiplies its product by ``scale_a * scale_b``, so the same ``alpha`` goes in as
those scale arguments (unit scaling keeps operands in FP8's range without per-tensor amax).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_unitscale.unit.fp8 import E4M3, E5M2, FP8Format

MatmulFormat = Literal["fp8", "fp8-sim"] | None
"""How a module multiplies: ``"fp8"`` (real FP8 GEMMs), ``"fp8-sim"`` (the working precision
on operands rounded to FP8 values) or None (the working precision)."""

Gemm = Callable[[Tensor, Tensor, float], Tensor]
"""``gemm(a, b, alpha)`` returns ``alpha * (a @ b)`` for 2-D ``a`` and ``b``, in one kernel."""


def addmm_gemm(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """``alpha * (a @ b)`` as one BLAS GEMM (``beta=0``: the input is ignored, not read).

    Args:
        a: ``(m, k)`` left operand.
        b: ``(k, n)`` right operand.
        alpha: scale of the product, applied inside the GEMM.
    """
    if alpha == 1.0:
        return torch.mm(a, b)
    return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=alpha)


@dataclass(frozen=True)
class FP8Gemm:
    """Real FP8 matmuls: operands cast to FP8 with a static scale of 1 and multiplied by
    ``torch._scaled_mm`` with fp32 accumulation, the op's scale as its ``scale_a``.

    The static scale is 1 because unit scaling keeps every operand of a hidden linear at RMS
    ~1 (u-μP's weights are N(0, 1), its activations and gradients unit-scaled by design), where
    E4M3's normal range is [2**-6, 448] and E5M2's [2**-14, 57344]: no amax, no scale history,
    no collective. The casts are the simulation's (:func:`lit_unitscale.unit.fp8.quantise`):
    round to nearest even, saturating at the format's largest value (E4M3 has no infinity;
    E5M2 would overflow to inf, so it saturates too). NaN and inf stay NaN and ±max or NaN, so
    a non-finite step still reaches the NaN guard through the loss.

    Args:
        forward_format: format of the input and weight (E4M3).
        grad_format: format of the output's gradient (E5M2).
        align: lay out and pad operands as CUDA's FP8 GEMMs need (None: on CUDA, and on the
            meta device, whose shape checks are CUDA's).
    """

    forward_format: FP8Format = E4M3
    grad_format: FP8Format = E5M2
    align: bool | None = None

    @staticmethod
    def cast(t: Tensor, fmt: FP8Format) -> Tensor:
        """``t`` in ``fmt``'s dtype, saturated at its largest finite value.

        Args:
            t: tensor of any float dtype.
            fmt: the FP8 format.
        """
        return t.clamp(-fmt.max_value, fmt.max_value).to(fmt.dtype)

    def mm(self, a8: Tensor, b8: Tensor, alpha: float, out_dtype: torch.dtype) -> Tensor:
        """``alpha * (a8 @ b8)`` in one ``_scaled_mm`` with fp32 accumulation.

        FP8 GEMMs take the left operand row-major and the right one column-major, and on CUDA
        every dimension a multiple of 16: operands are laid out, and there zero-padded (zeros
        add nothing to a dot product), and the result is cut back.

        Args:
            a8: ``(m, k)`` FP8 operand.
            b8: ``(k, n)`` FP8 operand.
            alpha: scale of the product (``scale_a``; ``scale_b`` is 1).
            out_dtype: dtype of the result.
        """
        m, n = a8.shape[0], b8.shape[1]
        # Row-major left, column-major right: CUDA's kernels and every compiled lowering
        # require it (free in forward, where the weight's transpose already is column-major).
        a8 = a8 if a8.is_contiguous() else a8.contiguous()
        b8 = b8 if b8.t().is_contiguous() else b8.t().contiguous().t()
        if self.align or (self.align is None and a8.device.type in ("cuda", "meta")):
            a8, b8 = _pad_to_16(a8), _pad_to_16(b8.t()).t()
        one = torch.ones((), device=a8.device, dtype=torch.float32)
        out = torch._scaled_mm(
            a8,
            b8,
            scale_a=torch.full((), alpha, device=a8.device, dtype=torch.float32),
            scale_b=one,
            out_dtype=out_dtype,
        )
        return out[:m, :n] if out.shape != (m, n) else out


FP8 = FP8Gemm()
"""The real-FP8 GEMM of hidden linears: E4M3 forward, E5M2 gradients, static scale 1."""


def _pad_to_16(t: Tensor) -> Tensor:
    rows, cols = (-t.shape[0]) % 16, (-t.shape[1]) % 16
    if not rows and not cols:
        return t
    # Padding in a wide dtype: not every FP8 dtype has a pad kernel.
    return torch.nn.functional.pad(t.float(), (0, cols, 0, rows)).to(t.dtype)


class ScaledLinear(torch.autograd.Function):
    """``y = output_scale * (x @ w.T) + bias_scale * b``; ``dx = grad_input_scale * (g @ w)``,
    ``dw = grad_weight_scale * (g.T @ x)``, ``db = grad_bias_scale * g.sum(0)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        output_scale: float,
        grad_input_scale: float,
        grad_weight_scale: float,
        bias_scale: float,
        grad_bias_scale: float,
        gemm: Gemm,
    ) -> Tensor:
        device = input.device.type
        # Autocast exists for real devices only; the meta device (shape checks) has none.
        autocast = device != "meta" and torch.is_autocast_enabled(device)
        if autocast:
            # As autocast runs F.linear: operands cast to its dtype, and those copies saved,
            # so the backward GEMMs (run outside autocast) see one dtype.
            dtype = torch.get_autocast_dtype(device)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        x2 = input.reshape(-1, input.shape[-1])
        ctx.scales = grad_input_scale, grad_weight_scale, grad_bias_scale
        ctx.gemm, ctx.has_bias, ctx.in_shape = gemm, bias is not None, input.shape
        if isinstance(gemm, FP8Gemm):
            return _fp8_forward(ctx, x2, weight, bias, input.shape, output_scale, bias_scale, gemm)
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            if bias is None:
                out = gemm(x2, weight.t(), output_scale)
            elif gemm is addmm_gemm:
                out = torch.addmm(bias, x2, weight.t(), beta=bias_scale, alpha=output_scale)
            else:
                out = gemm(x2, weight.t(), output_scale).add_(bias, alpha=bias_scale)
        ctx.save_for_backward(x2, weight)
        return out.view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        grad_input_scale, grad_weight_scale, grad_bias_scale = ctx.scales
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_input = grad_weight = grad_bias = None
        if isinstance(ctx.gemm, FP8Gemm):
            # The FP8 casts were saved, not the wide tensors; the gradient is cast once.
            g8 = ctx.gemm.cast(g2, ctx.gemm.grad_format)
            if ctx.needs_input_grad[0]:
                grad_input = ctx.gemm.mm(g8, weight, grad_input_scale, ctx.input_dtype)
                grad_input = grad_input.view(ctx.in_shape)
            if ctx.needs_input_grad[1]:
                grad_weight = ctx.gemm.mm(g8.t(), x2, grad_weight_scale, ctx.weight_dtype)
        else:
            if ctx.needs_input_grad[0]:
                grad_input = ctx.gemm(g2, weight, grad_input_scale).view(ctx.in_shape)
            if ctx.needs_input_grad[1]:
                grad_weight = ctx.gemm(g2.t(), x2, grad_weight_scale)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # A bias-sized (fan_out) multiply: the one scale here with no kernel to ride in.
            grad_bias = g2.sum(0)
            if grad_bias_scale != 1.0:
                grad_bias = grad_bias * grad_bias_scale
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _fp8_forward(
    ctx,
    x2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    in_shape: torch.Size,
    output_scale: float,
    bias_scale: float,
    gemm: FP8Gemm,
) -> Tensor:
    # The output keeps the working dtype (autocast's, applied above); accumulation is fp32.
    dtype = x2.dtype
    x8 = gemm.cast(x2, gemm.forward_format)
    w8 = gemm.cast(weight, gemm.forward_format)
    out = gemm.mm(x8, w8.t(), output_scale, dtype)
    if bias is not None:
        out = out.add_(bias.to(dtype), alpha=bias_scale)
    ctx.save_for_backward(x8, w8)
    ctx.input_dtype, ctx.weight_dtype = x2.dtype, weight.dtype
    return out.view(*in_shape[:-1], weight.shape[0])


def scaled_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    output_scale: float = 1.0,
    grad_input_scale: float = 1.0,
    grad_weight_scale: float = 1.0,
    bias_scale: float = 1.0,
    grad_bias_scale: float = 1.0,
    gemm: Gemm = addmm_gemm,
) -> Tensor:
    """A linear layer whose forward and backward scales are GEMM arguments.

    Args:
        input: ``(..., fan_in)`` tensor.
        weight: ``(fan_out, fan_in)`` weight.
        bias: optional ``(fan_out,)`` bias.
        output_scale: factor on ``input @ weight.T`` (the GEMM's ``alpha``).
        grad_input_scale: factor on the input's gradient ``grad @ weight``.
        grad_weight_scale: factor on the weight's gradient.
        bias_scale: factor on the bias in the output (the GEMM's ``beta``).
        grad_bias_scale: factor on the bias's gradient (a fan_out-sized multiply).
        gemm: the matmul that carries each scale: :func:`addmm_gemm`, or an :class:`FP8Gemm`
            for real FP8 (operands cast, the casts saved for backward).
    """
    return ScaledLinear.apply(
        input,
        weight,
        bias,
        float(output_scale),
        float(grad_input_scale),
        float(grad_weight_scale),
        float(bias_scale),
        float(grad_bias_scale),
        gemm,
    )


class ResidualFork(torch.autograd.Function):
    """Forward: the stream twice (branch input, skip). Backward: ``g_branch + skip_scale *
    g_skip`` as the one add that autograd would otherwise spend summing the two uses of the
    stream. The branch's own backward weight is applied by its first linears (``alpha``)."""

    @staticmethod
    def forward(ctx, input: Tensor, skip_scale: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.skip_scale = skip_scale
        return input.view_as(input), input.view_as(input)

    @staticmethod
    def backward(ctx, grad_branch: Tensor | None, grad_skip: Tensor | None):  # type: ignore[override]
        s = ctx.skip_scale
        if grad_skip is None:
            return grad_branch, None
        if grad_branch is None:
            return grad_skip * s, None
        return torch.add(grad_branch, grad_skip, alpha=s), None


class ResidualMerge(torch.autograd.Function):
    """Forward ``branch + skip_scale * skip`` in one add; backward passes the gradient to both
    unchanged (u-μP's residual add scales values only). The branch's forward weight is already
    in its last linear's ``alpha``."""

    @staticmethod
    def forward(ctx, branch: Tensor, skip: Tensor, skip_scale: float) -> Tensor:  # type: ignore[override]
        return torch.add(branch, skip, alpha=skip_scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, grad, None


class ScaledEmbedding(torch.autograd.Function):
    """Embedding lookup whose table gradient is scattered with ``index_add``'s ``alpha``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, input: Tensor, weight: Tensor, padding_idx: int | None, grad_scale: float
    ) -> Tensor:
        ctx.save_for_backward(input)
        ctx.num_embeddings, ctx.padding_idx, ctx.grad_scale = (
            weight.shape[0],
            padding_idx,
            grad_scale,
        )
        return torch.nn.functional.embedding(input, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (input,) = ctx.saved_tensors
        dim = grad.shape[-1]
        table = grad.new_zeros(ctx.num_embeddings, dim)
        table.index_add_(0, input.reshape(-1), grad.reshape(-1, dim), alpha=ctx.grad_scale)
        if ctx.padding_idx is not None:
            table[ctx.padding_idx] = 0
        return None, table, None, None


class UnitCrossEntropy(torch.autograd.Function):
    """Cross entropy whose value is torch's and whose logit gradient is
    ``grad_scale * (softmax - onehot)`` on every counted row.

    The scale rides in ``nll_loss_backward``'s normaliser: with ``mean`` it divides by the
    total weight it is given, so a total weight of ``1 / grad_scale`` multiplies instead.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, target: Tensor, ignore_index: int, mean: bool, grad_scale: float
    ) -> Tensor:
        logp = torch.log_softmax(logits, 1)
        # 1 = mean, 2 = sum (torch's reduction enum); mean divides by the counted rows.
        loss, total = torch.ops.aten.nll_loss_forward(
            logp, target, None, 1 if mean else 2, ignore_index
        )
        if mean:
            # No counted row: the loss is 0 with no gradient (torch's mean would give 0/0).
            loss = loss.masked_fill(total == 0, 0.0)
        ctx.save_for_backward(logp, target)
        ctx.ignore_index, ctx.grad_scale, ctx.in_dtype = ignore_index, grad_scale, logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        logp, target = ctx.saved_tensors
        norm = torch.full((), 1 / ctx.grad_scale, dtype=logp.dtype, device=logp.device)
        grad_logp = torch.ops.aten.nll_loss_backward(
            grad, logp, target, None, 1, ctx.ignore_index, norm
        )
        return (
            torch._log_softmax_backward_data(grad_logp, logp, 1, ctx.in_dtype),
            None,
            None,
            None,
            None,
        )
