"""Unit-scaled functional ops (the ``umup`` parametrization).

Each op multiplies its output by a forward scale and each input's gradient by a backward scale
chosen so that, for unit-RMS inputs at initialisation, outputs and gradients have RMS ≈ 1.
Names and arguments mirror ``torch.nn.functional`` and Graphcore's ``unit_scaling.functional``.
Where our numbers deliberately differ from that library: ``cross_entropy`` averages over the
non-ignored rows (as torch does), and weight-gradient scales count the global batch (see
:mod:`lit_unitscale.unit.global_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unitscale.unit import fp8
from lit_unitscale.unit.constraints import Constraint, apply_constraint
from lit_unitscale.unit.global_batch import weight_grad_scale
from lit_unitscale.unit.scale import (
    log_interpolate,
    scale,
    scale_bwd,
    scale_fwd,
    true_gradients_enabled,
)

__all__ = [
    "scale_fwd",
    "scale_bwd",
    "gelu",
    "silu",
    "silu_glu",
    "softmax",
    "dropout",
    "matmul",
    "linear",
    "linear_readout",
    "layer_norm",
    "rms_norm",
    "embedding",
    "residual_split",
    "residual_add",
    "residual_read",
    "add",
    "residual_tau",
    "attention_scale",
    "scaled_dot_product_attention",
    "cross_entropy",
]


def _elementwise(
    fn: Callable[[Tensor], Tensor],
    input: Tensor,
    output_scale: float,
    grad_scale: float,
    constraint: Constraint,
) -> Tensor:
    output_scale, grad_scale = apply_constraint(constraint, output_scale, grad_scale)
    return scale_fwd(fn(scale_bwd(input, grad_scale)), output_scale)


def _mult_alpha(mult: float, k: float) -> float:
    # sigmoid(log(k * mult**2)): how far a nonlinearity is from its linear (small mult) limit
    return 1 / (1 + 1 / (k * mult**2))


def gelu(
    input: Tensor,
    mult: float = 1.0,
    constraint: Constraint = "to_output_scale",
    approximate: str = "none",
) -> Tensor:
    """Unit-scaled GELU, ``gelu(x * mult) / mult``.

    Args:
        input: input tensor.
        mult: input multiplier (a u-μP hyperparameter), sharpening the nonlinearity.
        constraint: scale constraint between output and input gradient.
        approximate: ``"none"`` or ``"tanh"``, as in torch.
    """
    alpha = _mult_alpha(mult, 4.0)
    out_scale = log_interpolate(alpha, 2.0, (2 / (1 - 1 / math.pi)) ** 0.5)
    grad_scale = log_interpolate(alpha, 2.0, 2**0.5)

    def fn(x: Tensor) -> Tensor:
        if mult == 1:
            return F.gelu(x, approximate=approximate)
        return F.gelu(x * mult, approximate=approximate) / mult

    return _elementwise(fn, input, out_scale, grad_scale, constraint)


def silu(input: Tensor, mult: float = 1.0, constraint: Constraint = "to_output_scale") -> Tensor:
    """Unit-scaled SiLU, ``x * sigmoid(x * mult)``.

    Args:
        input: input tensor.
        mult: multiplier inside the sigmoid.
        constraint: scale constraint between output and input gradient.
    """
    out_scale = log_interpolate(_mult_alpha(mult, 4.0), 2.0, (2 / (1 - 1 / math.pi)) ** 0.5)
    grad_scale = log_interpolate(_mult_alpha(mult, 1.0), 2.0, 2**0.5)
    return _elementwise(
        lambda x: x * torch.sigmoid(x * mult), input, out_scale, grad_scale, constraint
    )


def silu_glu(input: Tensor, gate: Tensor, mult: float = 1.0) -> Tensor:
    """Unit-scaled gated linear unit ``input * silu(gate)`` (SwiGLU's core).

    Args:
        input: the linear branch.
        gate: the gate branch, passed through SiLU.
        mult: multiplier inside the sigmoid.
    """
    s = log_interpolate(_mult_alpha(mult, 1.0), 2.0, 2**0.5)
    input, gate = scale_bwd(input, s), scale_bwd(gate, s)
    return scale_fwd(input * gate * torch.sigmoid(gate * mult), s)


def softmax(
    input: Tensor,
    dim: int,
    dtype: torch.dtype | None = None,
    constraint: Constraint = "to_output_scale",
    mult: float = 1.0,
) -> Tensor:
    """Unit-scaled softmax of ``input * mult`` along ``dim``.

    Args:
        input: input tensor.
        dim: dimension to normalise.
        dtype: optional compute dtype, as in torch.
        constraint: scale constraint between output and input gradient.
        mult: temperature multiplier.
    """
    n = input.shape[dim]
    alpha = _mult_alpha(mult, 0.25)
    out_scale = log_interpolate(alpha, n, n**0.5)
    grad_scale = log_interpolate(alpha, n / mult, (n / mult) ** 0.5)
    return _elementwise(
        lambda x: F.softmax(x * mult, dim=dim, dtype=dtype),
        input,
        out_scale,
        grad_scale,
        constraint,
    )


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Dropout rescaled so that the output keeps unit RMS (torch's 1/(1-p) is undone by √(1-p)).

    In eval mode the output is the train-mode mean, ``√(1-p) · input``, so a model computes
    the same expected function in both modes.

    Args:
        input: input tensor.
        p: drop probability.
        training: apply dropout (else return the train-mode mean).
    """
    if p == 0.0:
        return input
    s = (1 - p) ** 0.5
    if not training:
        return scale(input, fwd=s, bwd=s)
    return scale(F.dropout(scale_bwd(input, s), p, training), fwd=s)


def matmul(left: Tensor, right: Tensor, constraint: Constraint = "to_output_scale") -> Tensor:
    """Unit-scaled matrix product ``left @ right``.

    Args:
        left: ``(..., m, k)`` tensor.
        right: ``(..., k, n)`` tensor.
        constraint: scale constraint among output and both input gradients.
    """
    m, k, n = left.shape[-2], left.shape[-1], right.shape[-1]
    out_s, left_s, right_s = apply_constraint(constraint, k**-0.5, n**-0.5, m**-0.5)
    left, right = fp8.matmul_inputs(scale_bwd(left, left_s), scale_bwd(right, right_s))
    return scale_fwd(fp8.matmul_output(torch.matmul(left, right)), out_s)


def linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    constraint: Constraint = "to_output_scale",
    scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5),
    parts: int = 1,
    tokens: int | None = None,
) -> Tensor:
    """Unit-scaled ``input @ weight.T + bias``.

    The bias is added to the unit-scaled product unscaled (so its effect, and with u-μP's LR
    multiplier 1 its learning rate, does not shrink with fan-in; the reference library scales
    it with the product).

    Args:
        input: ``(..., fan_in)`` tensor.
        weight: ``(fan_out, fan_in)`` weight.
        bias: optional ``(fan_out,)`` bias.
        constraint: scale constraint between output and input gradient.
        scale_power: powers for the (output, input-grad, weight-grad) scales.
        parts: equal projections fused into this one (SwiGLU's gate and up: 2); the
            input-gradient scale counts the width of one part, as separate projections would.
        tokens: rows the weight's gradient sums over in this step (None: this call's); a
            weight read several times in one step passes the total, so every read carries the
            same backward factor.
    """
    fan_out, fan_in = weight.shape
    tokens = tokens or input.numel() // fan_in
    out_s, in_s = apply_constraint(
        constraint, fan_in ** -scale_power[0], (fan_out // parts) ** -scale_power[1]
    )
    w_s = weight_grad_scale(tokens) ** (scale_power[2] / 0.5)
    bias = scale_bwd(bias, w_s) if bias is not None else None
    if fp8.fp8_enabled():
        # FP8 simulation quantises the unit-scaled operands themselves, so scale outside.
        input, weight = fp8.matmul_inputs(scale_bwd(input, in_s), scale_bwd(weight, w_s))
        out = scale_fwd(fp8.matmul_output(F.linear(input, weight)), out_s)
        return out + bias if bias is not None else out
    # Same maths, cheaper: fold the output scale into the weight (fan_in x fan_out elements
    # instead of tokens x fan_out). Through x @ (out_s * w).T autograd already scales the
    # input gradient by out_s, so only the remaining in_s / out_s is applied (none at all under
    # to_output_scale); the weight's own gradient scale replaces out_s in its backward.
    weight = scale(weight, fwd=out_s, bwd=w_s)
    return F.linear(scale_bwd(input, in_s / out_s), weight, bias)


def linear_readout(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    constraint: Constraint = None,
    tokens: int | None = None,
) -> Tensor:
    """Unit-scaled output projection: forward scale ``1/fan_in`` (u-μP's readout rule).

    Args:
        input: ``(..., fan_in)`` tensor.
        weight: ``(fan_out, fan_in)`` weight.
        bias: optional bias.
        constraint: scale constraint; None keeps the backward unit-scaled.
        tokens: rows the weight's gradient sums over in this step (None: this call's).
    """
    return linear(
        input, weight, bias, constraint=constraint, scale_power=(1.0, 0.5, 0.5), tokens=tokens
    )


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer norm with unit-scaled weight and bias gradients.

    Args:
        input: input tensor.
        normalized_shape: trailing dimensions to normalise.
        weight: optional elementwise gain.
        bias: optional elementwise bias.
        eps: added to the variance.
    """
    s = weight_grad_scale(input.numel() // math.prod(normalized_shape))
    weight = scale_bwd(weight, s) if weight is not None else None
    bias = scale_bwd(bias, s) if bias is not None else None
    return F.layer_norm(input, tuple(normalized_shape), weight, bias, eps)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """RMS norm with a unit-scaled weight gradient.

    Args:
        input: input tensor.
        normalized_shape: trailing dimensions to normalise.
        weight: optional elementwise gain.
        eps: added to the mean square.
    """
    if weight is not None:
        weight = scale_bwd(weight, weight_grad_scale(input.numel() // math.prod(normalized_shape)))
    return F.rms_norm(input, tuple(normalized_shape), weight, eps)


def embedding(
    input: Tensor, weight: Tensor, padding_idx: int | None = None, tokens: int | None = None
) -> Tensor:
    """Embedding lookup with a unit-scaled weight gradient.

    Args:
        input: integer indices.
        weight: ``(num_embeddings, dim)`` table.
        padding_idx: index whose row gets no gradient.
        tokens: lookups the table's gradient sums over in this step (None: this call's); a
            table read several times in one step passes the total.
    """
    s = weight.shape[0] ** 0.5 * weight_grad_scale(tokens or input.numel())
    return F.embedding(input, scale_bwd(weight, s), padding_idx)


def residual_split(input: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split the stream into (residual-branch input, skip) with gradient weights for ``tau``.

    Args:
        input: the residual stream.
        tau: relative weight of the residual branch over the skip path.
    """
    denom = (1 + tau**2) ** 0.5
    return scale_bwd(input, tau / denom), scale_bwd(input, 1 / denom)


def residual_add(residual: Tensor, skip: Tensor, tau: float = 1.0) -> Tensor:
    """Merge a residual branch and its skip so the sum keeps unit scale.

    Args:
        residual: output of the residual branch.
        skip: the skip path from :func:`residual_split`.
        tau: relative weight of the residual branch over the skip path.
    """
    denom = (1 + tau**2) ** 0.5
    return scale_fwd(residual, tau / denom) + scale_fwd(skip, 1 / denom)


def residual_read(input: Tensor, tau: float = 1.0) -> Tensor:
    """A tensor other than the stream that a residual branch reads (an encoder's memory, a
    position bias shared by all layers): its gradient gets the branch's forward weight, as the
    stream's does in :func:`residual_split`, so every branch that reads it carries the same
    backward factor and its summed gradient stays valid.

    Args:
        input: the tensor the branch reads.
        tau: the branch's τ.
    """
    return scale_bwd(input, tau / (1 + tau**2) ** 0.5)


def add(left: Tensor, right: Tensor) -> Tensor:
    """Sum of two independent unit-RMS tensors at unit RMS, ``(left + right) / √2``, with the
    same factor on both gradients (so each input's gradient is exact up to that constant).

    Args:
        left: first summand.
        right: second summand.
    """
    s = 2**-0.5
    return scale(left, fwd=s, bwd=s) + scale(right, fwd=s, bwd=s)


def residual_tau(
    index: int, n_branches: int, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0
) -> float:
    """u-μP depth rule: τ for residual branch ``index`` of ``n_branches`` (attn, mlp alternating).

    Every attention branch contributes equally, every MLP branch equally, all branches together
    ``residual_mult`` times the embedding, and attention ``residual_attn_ratio`` times MLP.

    Args:
        index: branch position, 0-based; even = attention, odd = MLP.
        n_branches: total number of residual branches (2 × layers).
        residual_mult: contribution of all residual branches relative to the embedding.
        residual_attn_ratio: contribution of attention branches relative to MLP branches.
    """
    alpha_mlp = residual_mult * (2 / (1 + residual_attn_ratio**2)) ** 0.5
    alpha_attn = residual_attn_ratio * alpha_mlp
    n_attn, n_mlp = (index + 1) // 2, index // 2
    alpha = alpha_attn if index % 2 == 0 else alpha_mlp
    return alpha / (n_branches / 2 + n_attn * alpha_attn**2 + n_mlp * alpha_mlp**2) ** 0.5


def attention_scale(
    key_len: int, d_head: int, is_causal: bool, mult: float = 1.0, dropout_p: float = 0.0
) -> float:
    """Output scale of unit-scaled attention for ``key_len`` keys (u-μP's averaged-length rule).

    At initialisation the softmax is near-flat and the output averages ~``key_len`` values
    (``log(key_len)`` of them on average when causal); the scale undoes that average, and
    ``sqrt(1 - dropout_p)`` undoes the inverted dropout's growth of the RMS.

    Args:
        key_len: number of keys the scale is computed for.
        d_head: head width.
        is_causal: causal attention (each query sees its own prefix).
        mult: attention-logit multiplier.
        dropout_p: attention-probability dropout.
    """
    # With a single key the output is that value itself: nothing is averaged (and log(1) = 0).
    averaged = (math.log(key_len) if is_causal else 1.0) / key_len if key_len > 1 else 1.0
    flat = 1 / (1 + 4 * d_head / mult**2)
    return (1 - dropout_p) ** 0.5 / log_interpolate(flat, averaged**0.5, 1.0)


def fold_causal(
    attn_mask: Tensor | None, is_causal: bool, q_len: int, k_len: int
) -> tuple[Tensor | None, bool]:
    """``(mask, is_causal)`` for torch's attention, which refuses a mask together with
    ``is_causal``: causality is folded into the mask when there is one.

    Args:
        attn_mask: boolean (True = attend) or additive float mask, or None.
        is_causal: causal attention.
        q_len: query length.
        k_len: key length.
    """
    if not is_causal or attn_mask is None:
        return attn_mask, is_causal
    keep = torch.ones(q_len, k_len, dtype=torch.bool, device=attn_mask.device).tril()
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep, False
    return attn_mask.masked_fill(~keep, float("-inf")), False


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
) -> Tensor:
    """Unit-scaled attention: logits scaled by ``mult / d_head`` (u-μP), output at unit RMS.

    Works for self, causal and cross attention (query and key lengths may differ) and with a
    boolean (True = attend) or additive float ``attn_mask`` (padding masks, position biases);
    ``is_causal`` may be combined with a mask. Grouped-query attention: ``key``/``value`` may
    have fewer heads than ``query``.

    Models pass ``scale_len`` from their configuration: the output scale is then a constant, so
    the op is one function of its unpadded input (masked keys count for nothing and a prefix's
    outputs do not change when keys are appended). Without it the scale follows the runtime key
    length, padding included, as in the reference library.

    Args:
        query: ``(batch, heads, q_len, d_head)``.
        key: ``(batch, kv_heads, k_len, d_head)``.
        value: ``(batch, kv_heads, k_len, d_head)``.
        attn_mask: optional mask broadcastable to ``(batch, heads, q_len, k_len)``.
        dropout_p: attention-probability dropout (its scale applies in eval mode too, so eval
            outputs equal the train-mode mean).
        is_causal: causal masking and the causal scale rule.
        mult: attention-logit multiplier (a u-μP hyperparameter).
        scale_len: key count the output scale is computed for (None: the runtime key length).
        training: apply dropout (the scale keeps its dropout term either way).
    """
    *_, q_len, d_head = query.shape
    k_len = key.shape[-2]
    s = attention_scale(scale_len or k_len, d_head, is_causal, mult, dropout_p)
    attn_mask, is_causal = fold_causal(attn_mask, is_causal, q_len, k_len)
    query, key, value = fp8.matmul_inputs(*(scale_bwd(t, s) for t in (query, key, value)))
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p if training else 0.0,
        is_causal=is_causal,
        scale=mult / d_head,
        enable_gqa=key.shape[-3] != query.shape[-3],
    )
    return scale_fwd(fp8.matmul_output(out), s)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    mult: float = 1.0,
) -> Tensor:
    """Cross entropy whose logit gradient has unit scale whatever the batch size.

    The loss value equals torch's (``mean`` divides by the number of non-ignored targets);
    only the gradient is rescaled.

    Args:
        input: ``(rows, classes)`` logits.
        target: ``(rows,)`` class indices.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``"mean"`` or ``"sum"``.
        label_smoothing: as in torch.
        mult: logit multiplier (u-μP's loss-softmax temperature).
    """
    if input.dim() != 2:
        raise ValueError(f"cross_entropy expects (rows, classes) logits, got {tuple(input.shape)}")
    vocab = input.shape[1]
    loss = F.cross_entropy(
        scale_fwd(input, mult),
        target,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    # The logit-gradient scale, applied where the gradient is one number instead of rows x
    # classes: the backward is linear in the incoming gradient, so the result is the same.
    loss = scale_bwd(loss, vocab / (vocab - 1) ** 0.5)
    if reduction == "sum":
        return loss
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    count = (target != ignore_index).sum().clamp_min(1)
    if true_gradients_enabled():
        return loss / count
    # Divide the value only: the gradient keeps its unit scale. ``loss - loss.detach()`` is an
    # exact zero carrying the gradient, so the value is exactly ``loss / count`` (subtracting a
    # detached ``loss - loss / count`` instead cancels catastrophically for large row counts).
    return (loss / count).detach() + (loss - loss.detach())
