"""Standard-parametrization (``sp``) twins of :mod:`lit_unitscale.unit.functional`.

Same names and signatures, no unit scaling: plain torch maths, so any model can be A/B'd
between ``umup`` and ``sp`` by one key. FP8 simulation still applies to matmuls, which is how
the difference in FP8 behaviour between the two shows up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unitscale.unit import fp8
from lit_unitscale.unit.constraints import Constraint
from lit_unitscale.unit.functional import fold_causal, residual_taus  # noqa: F401
from lit_unitscale.unit.kernels import (
    FP8,
    MatmulFormat,
    ScaledEmbedding,
    addmm_gemm,
    scaled_linear,
)
from lit_unitscale.unit.scale import scale, scale_bwd, scale_fwd  # noqa: F401


def gelu(
    input: Tensor,
    mult: float = 1.0,
    constraint: Constraint = "to_output_scale",
    approximate: str = "none",
) -> Tensor:
    """Plain GELU (``mult`` and ``constraint`` ignored)."""
    return F.gelu(input, approximate=approximate)


def silu(input: Tensor, mult: float = 1.0, constraint: Constraint = "to_output_scale") -> Tensor:
    """Plain SiLU."""
    return F.silu(input)


def silu_glu(input: Tensor, gate: Tensor, mult: float = 1.0) -> Tensor:
    """Plain ``input * silu(gate)``."""
    return input * F.silu(gate)


def softmax(
    input: Tensor,
    dim: int,
    dtype: torch.dtype | None = None,
    constraint: Constraint = "to_output_scale",
    mult: float = 1.0,
) -> Tensor:
    """Plain softmax."""
    return F.softmax(input, dim=dim, dtype=dtype)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Plain (inverted) dropout."""
    return F.dropout(input, p, training)


def matmul(left: Tensor, right: Tensor, constraint: Constraint = "to_output_scale") -> Tensor:
    """Plain matmul (FP8-simulated when enabled)."""
    left, right = fp8.matmul_inputs(left, right)
    return fp8.matmul_output(torch.matmul(left, right))


def linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    constraint: Constraint = "to_output_scale",
    scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5),
    parts: int = 1,
    tokens: int | None = None,
    input_mult: float = 1.0,
    output_mult: float = 1.0,
    grad_input_mult: float = 1.0,
    matmul: MatmulFormat = None,
) -> Tensor:
    """Plain linear (FP8-simulated when enabled, real FP8 with ``matmul="fp8"``, the same
    no-scale cast as u-μP's); multipliers, if any, ride in its GEMMs."""
    simulate = fp8.simulating(matmul)
    real_fp8 = matmul == "fp8" and not simulate
    if real_fp8 or ((input_mult, output_mult, grad_input_mult) != (1.0, 1.0, 1.0) and not simulate):
        return scaled_linear(
            input,
            weight,
            bias,
            output_scale=input_mult * output_mult,
            grad_input_scale=input_mult * grad_input_mult,
            grad_weight_scale=input_mult,
            bias_scale=output_mult,
            gemm=FP8 if real_fp8 else addmm_gemm,
        )
    input = scale_bwd(scale(input, fwd=input_mult, bwd=input_mult), grad_input_mult)
    input, weight = fp8.matmul_inputs(input, weight, simulate=simulate)
    if simulate and bias is not None:
        # The bias is no matmul operand: its gradient is the output's, unrounded (as umup's).
        out = fp8.matmul_output(F.linear(input, weight), simulate=True) + bias
    else:
        out = fp8.matmul_output(F.linear(input, weight, bias), simulate=simulate)
    return scale_fwd(out, output_mult)


def linear_readout(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    constraint: Constraint = None,
    tokens: int | None = None,
    matmul: MatmulFormat = None,
) -> Tensor:
    """Plain output projection."""
    return linear(input, weight, bias, matmul=matmul)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    weight_grad_mult: float = 1.0,
) -> Tensor:
    """Plain layer norm (``weight_grad_mult`` ignored)."""
    return F.layer_norm(input, tuple(normalized_shape), weight, bias, eps)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float = 1e-5,
    weight_grad_mult: float = 1.0,
) -> Tensor:
    """Plain RMS norm (``weight_grad_mult`` ignored)."""
    return F.rms_norm(input, tuple(normalized_shape), weight, eps)


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    tokens: int | None = None,
    grad_mult: float = 1.0,
) -> Tensor:
    """Plain embedding lookup (``grad_mult``, if not 1, scales the table's gradient)."""
    if grad_mult != 1.0:
        return ScaledEmbedding.apply(input, weight, padding_idx, float(grad_mult))
    return F.embedding(input, weight, padding_idx)


def residual_split(input: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Standard residual: the branch and the skip both see the stream unchanged."""
    return input, input


def residual_add(residual: Tensor, skip: Tensor, tau: float = 1.0) -> Tensor:
    """Standard residual sum ``skip + residual``."""
    return skip + residual


def residual_read(input: Tensor, tau: float = 1.0) -> Tensor:
    """Standard: a branch reads the tensor unchanged."""
    return input


def residual_weights(tau: float = 1.0) -> tuple[float, float]:
    """Standard residual: branch and skip both weigh 1."""
    return 1.0, 1.0


def residual_fork(input: Tensor, skip_weight: float) -> tuple[Tensor, Tensor]:
    """Standard residual: the branch and the skip both see the stream unchanged."""
    return input, input


def residual_merge(branch: Tensor, skip: Tensor, skip_weight: float) -> Tensor:
    """Standard residual sum ``skip + branch``."""
    return skip + branch if skip_weight == 1.0 else torch.add(branch, skip, alpha=skip_weight)


def mlp_multipliers(kind: str, mult: float = 1.0) -> tuple[float, float]:
    """Plain activations have no constants: ``(1, 1)``."""
    return 1.0, 1.0


def mlp_activation(h: Tensor, kind: str, mult: float = 1.0) -> Tensor:
    """Plain GELU, or SwiGLU's ``value * silu(gate)`` of ``h``'s two halves."""
    if kind == "gelu":
        return F.gelu(h)
    value, gate = h.chunk(2, dim=-1)
    return value * F.silu(gate)


def add(left: Tensor, right: Tensor) -> Tensor:
    """Plain sum."""
    return left + right


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    mult: float = 1.0,
    scale_len: int | None = None,
    training: bool = True,
    scale_output: bool = True,
    simulate_fp8: bool = False,
) -> Tensor:
    """Plain attention with the usual ``1/sqrt(d_head)`` logit scale (``mult``, ``scale_len``
    and ``scale_output`` ignored: it has no output scale); FP8-simulated as the unit op is."""
    simulate = fp8.simulating() or simulate_fp8
    attn_mask, is_causal = fold_causal(attn_mask, is_causal, query.shape[-2], key.shape[-2])
    query, key, value = fp8.matmul_inputs(query, key, value, simulate=simulate)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p if training else 0.0,
        is_causal=is_causal,
        enable_gqa=key.shape[-3] != query.shape[-3],
    )
    return fp8.matmul_output(out, simulate=simulate)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    mult: float = 1.0,
) -> Tensor:
    """Plain cross entropy."""
    return F.cross_entropy(
        input,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
