"""Multi-head attention (self, causal, cross; grouped-query heads) from unit-scaled parts,
and the key/value cache that incremental decoding passes through it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_unitscale.models.config import TransformerConfig
from lit_unitscale.models.positions import RotaryEmbedding
from lit_unitscale.unit import Linear, UnitModule, fp8
from lit_unitscale.unit.functional import attention_scale
from lit_unitscale.unit.kernels import MatmulFormat


class KVCache:
    """Keys and values of every position decoded so far, per attention layer.

    Prompts of different lengths share one batch **left-padded**: ``key_mask`` is False on
    the padding, every real query ignores it, and each token's absolute position is the number
    of real tokens before it (see :meth:`extend`), so a row computes what it would alone. RoPE
    and relative biases depend only on distances, which left padding preserves.

    Cross-attention keys and values are computed once from the encoder memory and kept apart
    (``cross``): every beam of a sequence reads the same memory, so beams never reorder them.
    """

    def __init__(self) -> None:
        self.self_kv: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self.cross: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self.key_mask: Tensor | None = None
        self.offset = 0

    @property
    def length(self) -> int:
        """Positions cached (padding included)."""
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    def extend(self, key_mask: Tensor) -> Tensor:
        """Record the next positions and return their absolute positions ``(batch, new)``.

        Args:
            key_mask: ``(batch, new)`` bool, True for real tokens, False for left padding.
        """
        self.offset = self.length
        mask = key_mask.bool()
        self.key_mask = mask if self.key_mask is None else torch.cat([self.key_mask, mask], 1)
        return (self.key_mask.long().cumsum(1) - 1).clamp_min(0)[:, self.offset :]

    def reorder(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` (beam search's surviving hypotheses), in that order.

        Args:
            rows: ``(batch,)`` indices into the current rows.
        """
        self.self_kv = {m: (k[rows], v[rows]) for m, (k, v) in self.self_kv.items()}
        if self.key_mask is not None:
            self.key_mask = self.key_mask[rows]


class Attention(UnitModule):
    """Attention over ``x`` (self) or over ``memory`` (cross).

    Args:
        config: model configuration.
        causal: mask future keys (self-attention in decoders).
        cross: attend to an encoder's output instead of ``x``.

    ``matmul`` is how the attention's own products (QK, AV) multiply: ``"fp8-sim"`` under the
    FP8 simulation, else the working precision (real FP8 keeps them wide).
    """

    matmul: MatmulFormat = None

    def __init__(self, config: TransformerConfig, causal: bool, cross: bool = False) -> None:
        super().__init__(config.parametrization)
        p, d, dh = config.parametrization, config.d_model, config.d_head
        self.n_heads, self.kv_heads, self.d_head = config.n_heads, config.kv_heads, dh
        self.causal, self.cross = causal, cross
        self.mult, self.dropout_p = config.attn_mult, config.dropout
        # A constant of the architecture, never the runtime length (see TransformerConfig).
        self.scale_len = config.attn_scale_len or config.max_seq_len
        # The output scale, a constant, rides in the output projection's GEMMs. A cached step
        # folds causality into its mask, but its keys follow the causal rule all the same.
        self.output_scale = (
            attention_scale(self.scale_len, dh, causal and not cross, self.mult, self.dropout_p)
            if p == "umup"
            else 1.0
        )
        # Where the kernel's own scale is used (FP8 simulation), a cached step's mask-folded
        # causality gets the non-causal rule from it; this restores the causal one.
        self.cached_rescale = (
            self.output_scale
            / attention_scale(self.scale_len, dh, False, self.mult, self.dropout_p)
            if p == "umup" and causal and not cross
            else 1.0
        )
        self.q = Linear(d, self.n_heads * dh, parametrization=p)
        self.kv = Linear(d, 2 * self.kv_heads * dh, parametrization=p)
        self.o = Linear(self.n_heads * dh, d, parametrization=p)

    def _keys_values(self, source: Tensor, grad_mult: float = 1.0) -> tuple[Tensor, Tensor]:
        b, s, _ = source.shape
        kv = self.kv(source, grad_input_mult=grad_mult)
        k, v = kv.view(b, s, 2, self.kv_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
        output_mult: float = 1.0,
        grad_input_mult: float = 1.0,
        memory_grad_mult: float = 1.0,
    ) -> Tensor:
        """``x``: (batch, length, d_model); ``mask``: bool/float, broadcastable to
        (batch, heads, q_len, k_len); causal masking is added here, except with a ``cache``,
        where the caller's mask already holds it (queries are the last ``length`` keys).
        ``output_mult`` weighs the output value, ``grad_input_mult`` the gradients of ``x``
        and ``memory`` (a residual branch's weights, carried by the projections' GEMMs);
        ``memory_grad_mult`` is one more factor on the memory's gradient."""
        b, t, _ = x.shape
        # FP8 simulation quantises the scaled output itself: there the scale stays its own step.
        fold = not fp8.simulating(self.o.matmul)
        if mask is not None and mask.requires_grad:
            # A learned bias on the logits (shared by all layers) gets the branch's backward
            # weight, less the output scale the folded projection already passed back into
            # it: a pass over the (heads, q, k) bias, relative positions only.
            mask = self.F.scale_bwd(mask, grad_input_mult / (self.output_scale if fold else 1.0))
        q = self.q(x, grad_input_mult=grad_input_mult)
        q = q.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        if cache is None:
            source, mem = (memory, memory_grad_mult) if self.cross else (x, 1.0)
            k, v = self._keys_values(source, grad_input_mult * mem)
            if rope is not None and not self.cross:
                q, k = rope(q), rope(k)
        elif self.cross:
            if self not in cache.cross:
                cache.cross[self] = self._keys_values(memory, grad_input_mult * memory_grad_mult)
            k, v = cache.cross[self]
        else:
            k, v = self._keys_values(x, grad_input_mult)
            if rope is not None:
                q, k = rope(q, cache.offset), rope(k, cache.offset)
            if self in cache.self_kv:
                past_k, past_v = cache.self_kv[self]
                k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            cache.self_kv[self] = (k, v)
        out = self.F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p,
            is_causal=self.causal and not self.cross and cache is None,
            mult=self.mult,
            scale_len=self.scale_len,
            training=self.training,
            scale_output=not fold,
            simulate_fp8=fp8.simulating(self.matmul),
        )
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)
        in_mult = self.output_scale if fold else (self.cached_rescale if cache is not None else 1.0)
        return self.o(out, input_mult=in_mult, output_mult=output_mult)
