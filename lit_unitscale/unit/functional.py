"""Unit-scaled functional ops (the ``umup`` parametrization).

Each op multiplies its output by a forward scale and each input's gradient by a backward scale
chosen so that, for unit-RMS inputs at initialisation, outputs and gradients have RMS ≈ 1.
Names and arguments mirror ``torch.nn.functional`` and Graphcore's ``unit_scaling.functional``.
Where our numbers deliberately differ from that library: ``cross_entropy`` averages over the
non-ignored rows (as torch does), and weight-gradient scales count the global batch (see
:mod:`lit_unitscale.unit.global_batch`).

Every constant scale rides in a kernel that runs anyway (:mod:`lit_unitscale.unit.kernels`):
linears take their three scales as GEMM ``alpha``s, attention its logit multiplier as SDPA's
``scale``, and the multipliers of attention outputs, activations and residual branches are
folded by the models into the neighbouring linears (``*_multipliers``, ``scale_output=False``,
``residual_fork``/``residual_merge``). The ops keep their composed definition (a scale pass per
constant) under :func:`~lit_unitscale.unit.scale.true_gradients` and FP8 simulation, which
quantises the scaled operands themselves.
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
from lit_unitscale.unit.kernels import (
    FP8,
    MatmulFormat,
    ResidualFork,
    ResidualMerge,
    ScaledEmbedding,
    UnitCrossEntropy,
    addmm_gemm,
    scaled_linear,
)
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
    "residual_weights",
    "residual_fork",
    "residual_merge",
    "residual_taus",
    "add",
    "mlp_multipliers",
    "mlp_activation",
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


def mlp_multipliers(kind: str, mult: float = 1.0) -> tuple[float, float]:
    """``(up, down)``: the unit-scaled activation as ``down * act(up * h)`` with ``act`` from
    :func:`mlp_activation`, both constants value-and-gradient multipliers that the MLP folds
    into its up and down projections (their GEMMs' ``alpha``). Exact for :func:`gelu` under
    its default ``to_output_scale`` constraint, whose output and input-gradient scales are one
    number, and for :func:`silu_glu`, whose three scales are one.

    Args:
        kind: ``"gelu"`` or ``"swiglu"``.
        mult: the activation's multiplier (u-μP's ``ffn_act_mult``).
    """
    if kind == "gelu":
        alpha = _mult_alpha(mult, 4.0)
        out_scale = log_interpolate(alpha, 2.0, (2 / (1 - 1 / math.pi)) ** 0.5)
        return mult, out_scale / mult
    if kind == "swiglu":
        # The multiplier acts inside the sigmoid only, so it stays in mlp_activation.
        return 1.0, log_interpolate(_mult_alpha(mult, 1.0), 2.0, 2**0.5)
    raise ValueError(f"mlp kind must be 'gelu' or 'swiglu', got {kind!r}")


def mlp_activation(h: Tensor, kind: str, mult: float = 1.0) -> Tensor:
    """The MLP's nonlinearity without its constants (see :func:`mlp_multipliers`):
    ``gelu(h)``, or for SwiGLU ``value * gate * sigmoid(mult * gate)`` of ``h``'s two halves.

    Args:
        h: up-projection output (SwiGLU: value and gate concatenated on the last dimension).
        kind: ``"gelu"`` or ``"swiglu"``.
        mult: SwiGLU's multiplier inside the sigmoid (gelu's is folded into ``up``).
    """
    if kind == "gelu":
        return F.gelu(h)
    value, gate = h.chunk(2, dim=-1)
    if mult == 1.0:
        return value * F.silu(gate)
    # mult scales only the sigmoid's argument, not the gate it multiplies: its own pass.
    return value * gate * torch.sigmoid(gate * mult)


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


def _composed(simulate: bool) -> bool:
    # FP8 simulation quantises the unit-scaled operands themselves, and true-gradient mode
    # drops every backward-only scale: both need each scale as its own step.
    return simulate or true_gradients_enabled()


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
    """Unit-scaled ``input @ weight.T + bias``: one GEMM forward, two backward, each with its
    scale as ``alpha`` (see :func:`lit_unitscale.unit.kernels.scaled_linear`).

    The bias is added to the unit-scaled product unscaled (so its effect, and with u-μP's LR
    multiplier 1 its learning rate, does not shrink with fan-in; the reference library scales
    it with the product).

    The three multipliers let a caller fold a neighbour's constant into this op's kernels, at
    no cost and with the same values and gradients as applying it separately.

    Args:
        input: ``(..., fan_in)`` tensor.
        weight: ``(fan_out, fan_in)`` weight.
        bias: optional ``(fan_out,)`` bias.
        constraint: scale constraint between output and input gradient.
        scale_power: powers for the (output, grad-input, grad-weight) scales.
        parts: equal projections fused into this one (SwiGLU's gate and up: 2); the
            grad-input scale counts the width of one part, as separate projections would.
        tokens: rows the weight's gradient sums over in this step (None: this call's); a
            weight read several times in one step passes the total, so every read carries the
            same backward factor.
        input_mult: a constant the input is multiplied by, value and gradient alike (the
            output scale of the op before, e.g. attention or an activation).
        output_mult: a factor on the output value only (a residual branch's weight).
        grad_input_mult: a factor on the input's gradient only (a residual branch's backward
            weight).
        matmul: ``"fp8"``: real FP8 GEMMs (:data:`lit_unitscale.unit.kernels.FP8`), the
            scales as ``_scaled_mm``'s scale arguments; ``"fp8-sim"``: the FP8 simulation;
            None: the working precision (simulated inside :func:`fp8.fp8_matmuls`).
    """
    fan_out, fan_in = weight.shape
    tokens = tokens or input.numel() // fan_in
    output_scale, grad_input_scale = apply_constraint(
        constraint, fan_in ** -scale_power[0], (fan_out // parts) ** -scale_power[1]
    )
    grad_weight_scale = weight_grad_scale(tokens) ** (scale_power[2] / 0.5)
    simulate = fp8.simulating(matmul)
    real_fp8 = matmul == "fp8" and not simulate
    if real_fp8 or not _composed(simulate):
        # Real FP8 casts the input as it arrives, at its unit scale: a neighbour's multiplier
        # rides in _scaled_mm's scales as it rides in the GEMMs' alpha (the simulation, op by
        # op, rounds the input after it; the two agree when it is 1).
        return scaled_linear(
            input,
            weight,
            bias,
            output_scale=output_scale * input_mult * output_mult,
            grad_input_scale=grad_input_scale * input_mult * grad_input_mult,
            grad_weight_scale=grad_weight_scale * input_mult,
            bias_scale=output_mult,
            grad_bias_scale=grad_weight_scale,
            gemm=FP8 if real_fp8 else addmm_gemm,
        )
    input = scale_bwd(scale(input, fwd=input_mult, bwd=input_mult), grad_input_mult)
    bias = scale_bwd(bias, grad_weight_scale) if bias is not None else None
    if simulate:
        input, weight = fp8.matmul_inputs(
            scale_bwd(input, grad_input_scale), scale_bwd(weight, grad_weight_scale), simulate=True
        )
        out = scale_fwd(fp8.matmul_output(F.linear(input, weight), simulate=True), output_scale)
        out = out + bias if bias is not None else out
        return scale_fwd(out, output_mult)
    weight = scale(weight, fwd=output_scale, bwd=grad_weight_scale)
    out = F.linear(scale_bwd(input, grad_input_scale / output_scale), weight, bias)
    return scale_fwd(out, output_mult)


def linear_readout(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    constraint: Constraint = None,
    tokens: int | None = None,
    matmul: MatmulFormat = None,
) -> Tensor:
    """Unit-scaled output projection: forward scale ``1/fan_in`` (u-μP's readout rule).

    Args:
        input: ``(..., fan_in)`` tensor.
        weight: ``(fan_out, fan_in)`` weight.
        bias: optional bias.
        constraint: scale constraint; None keeps the backward unit-scaled.
        tokens: rows the weight's gradient sums over in this step (None: this call's).
        matmul: the matmul format, as for :func:`linear`.
    """
    return linear(
        input,
        weight,
        bias,
        constraint=constraint,
        scale_power=(1.0, 0.5, 0.5),
        tokens=tokens,
        matmul=matmul,
    )


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    weight_grad_mult: float = 1.0,
) -> Tensor:
    """Layer norm with unit-scaled weight and bias gradients.

    The norm's backward makes its input and parameter gradients from one incoming gradient,
    so the parameters' scale cannot ride in it: it is a pass over the (dim,)-sized gradients.

    Args:
        input: input tensor.
        normalized_shape: trailing dimensions to normalise.
        weight: optional elementwise gain.
        bias: optional elementwise bias.
        eps: added to the variance.
        weight_grad_mult: a factor on the gain's and bias's gradient scale (undoes a factor a
            caller folded into the gradient arriving at the output).
    """
    s = weight_grad_scale(input.numel() // math.prod(normalized_shape)) * weight_grad_mult
    weight = scale_bwd(weight, s) if weight is not None else None
    bias = scale_bwd(bias, s) if bias is not None else None
    return F.layer_norm(input, tuple(normalized_shape), weight, bias, eps)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float = 1e-5,
    weight_grad_mult: float = 1.0,
) -> Tensor:
    """RMS norm with a unit-scaled weight gradient (a pass over the (dim,)-sized gradient, as
    in :func:`layer_norm`).

    Args:
        input: input tensor.
        normalized_shape: trailing dimensions to normalise.
        weight: optional elementwise gain.
        eps: added to the mean square.
        weight_grad_mult: a factor on the gain's gradient scale (see :func:`layer_norm`).
    """
    if weight is not None:
        s = weight_grad_scale(input.numel() // math.prod(normalized_shape)) * weight_grad_mult
        weight = scale_bwd(weight, s)
    return F.rms_norm(input, tuple(normalized_shape), weight, eps)


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    tokens: int | None = None,
    grad_mult: float = 1.0,
) -> Tensor:
    """Embedding lookup with a unit-scaled weight gradient (scattered with that scale as
    ``index_add``'s ``alpha``).

    Args:
        input: integer indices.
        weight: ``(num_embeddings, dim)`` table.
        padding_idx: index whose row gets no gradient.
        tokens: lookups the table's gradient sums over in this step (None: this call's); a
            table read several times in one step passes the total.
        grad_mult: a factor on the table's gradient from this read (a caller's backward
            constant folded into the scatter).
    """
    s = weight.shape[0] ** 0.5 * weight_grad_scale(tokens or input.numel()) * grad_mult
    if true_gradients_enabled():
        return F.embedding(input, weight, padding_idx)
    return ScaledEmbedding.apply(input, weight, padding_idx, s)


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


def residual_weights(tau: float = 1.0) -> tuple[float, float]:
    """``(branch, skip)`` weights of a residual merge at τ: ``τ/√(1+τ²)`` and ``1/√(1+τ²)``.

    The same pair weighs the gradients at the split, so a stack folds them into kernels:
    the branch weight into its last linear's output (``output_mult``) and its first linears'
    input gradient (``grad_input_mult``), the skip weight into :func:`residual_merge`'s add
    and :func:`residual_fork`'s gradient sum.

    Args:
        tau: relative weight of the residual branch over the skip path.
    """
    denom = (1 + tau**2) ** 0.5
    return tau / denom, 1 / denom


def residual_fork(input: Tensor, skip_weight: float) -> tuple[Tensor, Tensor]:
    """(branch input, skip) of the stream; going back, the skip's gradient is weighted by
    ``skip_weight`` in the add that sums the two (the branch applies its own weight).

    Args:
        input: the residual stream.
        skip_weight: the skip weight from :func:`residual_weights`.
    """
    if true_gradients_enabled():
        return input, input
    return ResidualFork.apply(input, float(skip_weight))


def residual_merge(branch: Tensor, skip: Tensor, skip_weight: float) -> Tensor:
    """``branch + skip_weight * skip`` in one add, the gradient passed to both unchanged; the
    branch arrives already weighted (its last linear's ``output_mult``).

    Args:
        branch: the weighted residual branch output.
        skip: the skip from :func:`residual_fork`.
        skip_weight: the skip weight from :func:`residual_weights`.
    """
    if true_gradients_enabled():
        return torch.add(branch, skip, alpha=skip_weight)
    return ResidualMerge.apply(branch, skip, float(skip_weight))


def residual_taus(
    kinds: Sequence[str], residual_mult: float = 1.0, residual_attn_ratio: float = 1.0
) -> list[float]:
    """u-μP depth rule: the residual weight τ of each branch (``"attn"`` or ``"mlp"``).

    Branch i of kind k has weight ``a_i = alpha_k / sqrt(n_k)`` relative to the embedding, with
    ``alpha_mlp = residual_mult * sqrt(2 / (1 + ratio**2))`` and ``alpha_attn = ratio * alpha_mlp``,
    so all attention branches together contribute ``alpha_attn**2`` and all MLP branches
    ``alpha_mlp**2``; τ_i is a_i over the stream's scale before it. Covers alternating attn/mlp
    stacks (the reference library's rule) and decoders with cross-attention (three branches
    per layer).

    Args:
        kinds: branch kinds in stream order.
        residual_mult: contribution of all residual branches relative to the embedding.
        residual_attn_ratio: contribution of attention branches relative to MLP branches.
    """
    alpha_mlp = residual_mult * (2 / (1 + residual_attn_ratio**2)) ** 0.5
    alpha = {"attn": residual_attn_ratio * alpha_mlp, "mlp": alpha_mlp}
    count = {k: list(kinds).count(k) for k in ("attn", "mlp")}
    taus, stream_var = [], 1.0
    for kind in kinds:
        a2 = alpha[kind] ** 2 / count[kind]
        taus.append((a2 / stream_var) ** 0.5)
        stream_var += a2
    return taus


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
    scale_output: bool = True,
    simulate_fp8: bool = False,
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
        scale_output: apply the output scale (:func:`attention_scale`, on the value and on
            the gradients of query, key and value alike). False returns the kernel's output
            unscaled, for a caller that folds the scale into the next linear's ``input_mult``.
        simulate_fp8: round the products' operands to E4M3 and the output's gradient to E5M2
            (also inside :func:`fp8.fp8_matmuls`).
    """
    simulate = fp8.simulating() or simulate_fp8
    *_, q_len, d_head = query.shape
    k_len = key.shape[-2]
    s = attention_scale(scale_len or k_len, d_head, is_causal, mult, dropout_p)
    attn_mask, is_causal = fold_causal(attn_mask, is_causal, q_len, k_len)
    if not scale_output:
        s = 1.0
    scaled = (scale_bwd(t, s) for t in (query, key, value))
    query, key, value = fp8.matmul_inputs(*scaled, simulate=simulate)
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
    return scale_fwd(fp8.matmul_output(out, simulate=simulate), s)


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
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    vocab = input.shape[1]
    grad_scale = vocab / (vocab - 1) ** 0.5
    # mult scales the logits inside the loss only (its gradient is not scaled back): a pass of
    # its own over the logits, taken only when the multiplier is not 1.
    logits = scale_fwd(input, mult)
    if label_smoothing == 0.0 and not true_gradients_enabled():
        return UnitCrossEntropy.apply(logits, target, ignore_index, reduction == "mean", grad_scale)
    loss = F.cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    # The logit-gradient scale, applied where the gradient is one number instead of rows x
    # classes: the backward is linear in the incoming gradient, so the result is the same.
    loss = scale_bwd(loss, grad_scale)
    if reduction == "sum":
        return loss
    count = (target != ignore_index).sum().clamp_min(1)
    if true_gradients_enabled():
        return loss / count
    # Divide the value only: the gradient keeps its unit scale. ``loss - loss.detach()`` is an
    # exact zero carrying the gradient, so the value is exactly ``loss / count`` (subtracting a
    # detached ``loss - loss / count`` instead cancels catastrophically for large row counts).
    return (loss / count).detach() + (loss - loss.detach())
