"""Position encodings: sinusoidal and learned (added to embeddings), RoPE (rotates q and k),
T5-style relative position bias (added to attention logits). Each keeps unit scale under u-μP."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_unitscale.unit import Embedding, UnitModule
from lit_unitscale.unit.global_batch import weight_grad_scale


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """The Transformer's sin/cos table, ``(length, dim)``, scaled to unit RMS (×√2).

    Args:
        length: number of positions.
        dim: width (even).
    """
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table * math.sqrt(2.0)


class AbsolutePositions(UnitModule):
    """Adds a position vector to each token embedding: ``sinusoidal`` or ``learned``.

    Args:
        kind: ``"sinusoidal"`` or ``"learned"``.
        max_len: number of positions.
        dim: model width.
        parametrization: ``"umup"`` or ``"sp"``.
    """

    def __init__(self, kind: str, max_len: int, dim: int, parametrization: str = "umup") -> None:
        super().__init__(parametrization)
        self.kind = kind
        if kind == "learned":
            self.table = Embedding(max_len, dim, parametrization=parametrization)
        else:
            self.register_buffer("sinusoid", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: Tensor, offset: int = 0, tokens: int | None = None) -> Tensor:
        """Add positions ``offset ...`` to ``x`` (batch, length, dim); ``tokens``: lookups of
        the learned table in the whole step (None: this call's)."""
        batch, length = x.shape[:2]
        if self.kind == "learned":
            # Look up one row per token (not per position broadcast over the batch), so the
            # table's gradient scale counts every token that used it.
            idx = torch.arange(offset, offset + length, device=x.device).expand(batch, length)
            pos = self.table(idx, tokens).to(x.dtype)
        else:
            pos = self.sinusoid[offset : offset + length].to(x.dtype)
        # Equal-weight sum keeps unit RMS (umup) with the same factor on both gradients, so a
        # token table also used as the readout (tied) keeps a valid gradient; sp adds plainly.
        # Its 1/√2 is a pass of its own: the lookups before it have no scale argument (rope,
        # the default, adds nothing here).
        return self.F.add(x, pos.expand_as(x))


class RotaryEmbedding(nn.Module):
    """RoPE: rotates pairs of q/k channels by position-dependent angles (norm-preserving).

    Args:
        d_head: head width (even).
        max_len: positions cached.
        base: frequency base.
    """

    def __init__(self, d_head: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate ``x`` of shape ``(batch, heads, length, d_head)``."""
        length = x.shape[-2]
        cos = self.cos[offset : offset + length].to(x.dtype)
        sin = self.sin[offset : offset + length].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def relative_bucket(
    relative: Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> Tensor:
    """T5's bucketing of ``key - query`` offsets: exact near zero, logarithmic further out.

    Args:
        relative: integer offsets ``key_pos - query_pos``.
        bidirectional: separate buckets for past and future (encoders).
        buckets: total number of buckets.
        max_distance: offsets beyond this share the last bucket.
    """
    out = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        out += (relative > 0).long() * buckets
        n = relative.abs()
    else:
        n = (-relative).clamp_min(0)
    exact = buckets // 2
    is_small = n < exact
    large = (
        exact
        + (
            torch.log(n.float().clamp_min(1) / exact)
            / math.log(max_distance / exact)
            * (buckets - exact)
        ).long()
    )
    large = large.clamp_max(buckets - 1)
    return out + torch.where(is_small, n, large)


class RelativePositionBias(UnitModule):
    """Learned per-head bias on attention logits, indexed by relative-position bucket.

    Args:
        n_heads: attention heads.
        bidirectional: encoder (True) or causal decoder (False).
        buckets: number of buckets.
        max_distance: offsets beyond this share a bucket.
        parametrization: ``"umup"`` or ``"sp"``.
    """

    def __init__(
        self,
        n_heads: int,
        bidirectional: bool,
        buckets: int = 32,
        max_distance: int = 128,
        parametrization: str = "umup",
    ) -> None:
        super().__init__(parametrization)
        self.bidirectional, self.buckets, self.max_distance = bidirectional, buckets, max_distance
        # A bias on logits: u-μP treats it like any bias (zero init, LR ×1, no weight decay);
        # N(0, 1) would start it ~√d_head times larger than the content logits.
        init = torch.zeros(buckets, n_heads)
        if parametrization == "sp":
            init.normal_(std=0.02)
        self._register("weight", nn.Parameter(init), "bias", n_heads)

    def forward(self, q_len: int, k_len: int, device: torch.device) -> Tensor:
        """Bias of shape ``(1, heads, q_len, k_len)``."""
        rel = (
            torch.arange(k_len, device=device)[None, :]
            - torch.arange(q_len, device=device)[:, None]
        )
        idx = relative_bucket(rel, self.bidirectional, self.buckets, self.max_distance)
        weight = self.weight
        if self.parametrization == "umup":
            # Each bucket's gradient sums over many (query, key) pairs; keep it unit-scaled.
            weight = self.F.scale_bwd(
                weight, (self.buckets**0.5) * weight_grad_scale(q_len * k_len)
            )
        return weight[idx].permute(2, 0, 1).unsqueeze(0)
