"""Multi-head attention (self, causal, cross; grouped-query heads) from unit-scaled parts."""

from __future__ import annotations

from torch import Tensor

from lit_unitscale.models.config import TransformerConfig
from lit_unitscale.models.positions import RotaryEmbedding
from lit_unitscale.unit import Linear, UnitModule


class Attention(UnitModule):
    """Attention over ``x`` (self) or over ``memory`` (cross).

    Args:
        config: model configuration.
        causal: mask future keys (self-attention in decoders).
        cross: attend to an encoder's output instead of ``x``.
    """

    def __init__(self, config: TransformerConfig, causal: bool, cross: bool = False) -> None:
        super().__init__(config.parametrization)
        p, d, dh = config.parametrization, config.d_model, config.d_head
        self.n_heads, self.kv_heads, self.d_head = config.n_heads, config.kv_heads, dh
        self.causal, self.cross = causal, cross
        self.mult, self.dropout_p = config.attn_mult, config.dropout
        # A constant of the architecture, never the runtime length (see TransformerConfig).
        self.scale_len = config.attn_scale_len or config.max_seq_len
        self.q = Linear(d, self.n_heads * dh, parametrization=p)
        self.kv = Linear(d, 2 * self.kv_heads * dh, parametrization=p)
        self.o = Linear(self.n_heads * dh, d, parametrization=p)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        rope: RotaryEmbedding | None = None,
    ) -> Tensor:
        """``x``: (batch, length, d_model); ``mask``: bool/float, broadcastable to
        (batch, heads, q_len, k_len); causal masking is added here."""
        b, t, _ = x.shape
        source = memory if self.cross else x
        q = self.q(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        k, v = (
            self.kv(source)
            .view(b, source.shape[1], 2, self.kv_heads, self.d_head)
            .permute(2, 0, 3, 1, 4)
        )
        if rope is not None and not self.cross:
            q, k = rope(q), rope(k)
        out = self.F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p,
            is_causal=self.causal and not self.cross,
            mult=self.mult,
            scale_len=self.scale_len,
            training=self.training,
        )
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head))
