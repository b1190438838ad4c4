"""The one Transformer stack behind encoders, decoders and encoder-decoders.

Pre-norm blocks; each residual branch (self-attention, cross-attention, MLP) is merged with the
stream at a weight τ from the u-μP depth rule (``unit.functional.residual_taus``), so the
stream keeps unit scale at any depth. Under ``sp`` the same code is a plain pre-norm Transformer.

No scale here is a pass of its own: a branch's weights ride in its first linears' grad-input
GEMMs and its last linear's output GEMM, the skip's in the stream's add (forward) and in the
add that sums the stream's two gradients (backward); attention and activation output scales
ride in the following projection. The monitored tensors (block outputs and their gradients)
are exactly those of the composed ops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_unitscale.models.attention import Attention, KVCache
from lit_unitscale.models.config import TransformerConfig
from lit_unitscale.models.positions import RelativePositionBias, RotaryEmbedding
from lit_unitscale.unit import LayerNorm, Linear, RMSNorm, UnitModule, fp8, set_depth
from lit_unitscale.unit.functional import residual_taus


def make_norm(config: TransformerConfig) -> nn.Module:
    """The configured pre-norm (RMSNorm or LayerNorm)."""
    cls = RMSNorm if config.norm == "rms" else LayerNorm
    return cls(
        config.d_model,
        elementwise_affine=config.norm_affine,
        parametrization=config.parametrization,
    )


class MLP(UnitModule):
    """GELU MLP or SwiGLU.

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        p, d, h = config.parametrization, config.d_model, config.d_ff
        self.kind, self.mult = config.mlp, config.ffn_act_mult
        if self.kind == "swiglu":
            # Gate and up are two h-wide projections fused into one matmul; each mirrors the
            # down projection, so constraint=None keeps forward and backward scales separate
            # while the branch's backward factors multiply to its forward ones (valid).
            self.up = Linear(d, 2 * h, parametrization=p, constraint=None, parts=2)
            self.down = Linear(h, d, parametrization=p, constraint=None)
        else:
            self.up = Linear(d, h, parametrization=p)
            self.down = Linear(h, d, parametrization=p)
        # The activation's constants, folded into up's and down's GEMMs.
        self.up_mult, self.down_mult = self.F.mlp_multipliers(self.kind, self.mult)

    def forward(self, x: Tensor, output_mult: float = 1.0, grad_input_mult: float = 1.0) -> Tensor:
        """``output_mult`` weighs the output value, ``grad_input_mult`` the gradient of ``x``."""
        if not fp8.simulating(self.up.matmul):
            h = self.up(x, input_mult=self.up_mult, grad_input_mult=grad_input_mult)
            h = self.F.mlp_activation(h, self.kind, self.mult)
            return self.down(h, input_mult=self.down_mult, output_mult=output_mult)
        # FP8 simulation quantises the scaled activation itself: the composed ops.
        h = self.up(x, grad_input_mult=grad_input_mult)
        if self.kind == "swiglu":
            value, gate = h.chunk(2, dim=-1)
            h = self.F.silu_glu(value, gate, mult=self.mult)
        else:
            h = self.F.gelu(h, mult=self.mult)
        return self.down(h, output_mult=output_mult)


class Block(UnitModule):
    """One pre-norm layer: self-attention, optional cross-attention, MLP.

    Args:
        config: model configuration.
        causal: causal self-attention.
        cross_attend: add a cross-attention branch over an encoder's output.
        taus: residual weights, one per branch in order.
    """

    monitor_role = "block"

    def __init__(
        self, config: TransformerConfig, causal: bool, cross_attend: bool, taus: list[float]
    ) -> None:
        super().__init__(config.parametrization)
        self.taus, self.dropout_p = taus, config.dropout
        self.attn_norm, self.attn = make_norm(config), Attention(config, causal)
        if cross_attend:
            self.cross_norm, self.cross = make_norm(config), Attention(config, False, cross=True)
        else:
            self.cross = None
        self.mlp_norm, self.mlp = make_norm(config), MLP(config)
        # The stack's one factor on the memory's summed gradient (see TransformerStack).
        self.memory_grad_mult = 1.0

    def _branch(self, x: Tensor, tau: float, norm: nn.Module, fn, **kwargs) -> Tensor:
        branch_w, skip_w = self.F.residual_weights(tau)
        residual, skip = self.F.residual_fork(x, skip_w)
        # The branch weight on the normalised input's gradient reaches the norm's gain too;
        # its gradient scale takes it back out.
        h = norm(residual, weight_grad_mult=1 / branch_w if branch_w else 1.0)
        # Every other tensor the branch reads (an encoder's memory, a shared position bias)
        # gets the same backward weight inside fn, so gradients summed over branches stay valid.
        h = fn(h, output_mult=branch_w, grad_input_mult=branch_w, **kwargs)
        h = self.F.dropout(h, self.dropout_p, self.training)
        return self.F.residual_merge(h, skip, skip_w)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        taus = iter(self.taus)
        x = self._branch(
            x, next(taus), self.attn_norm, self.attn, mask=mask, rope=rope, cache=cache
        )
        if self.cross is not None:
            x = self._branch(
                x,
                next(taus),
                self.cross_norm,
                self.cross,
                memory=memory,
                mask=memory_mask,
                cache=cache,
                memory_grad_mult=self.memory_grad_mult,
            )
        return self._branch(x, next(taus), self.mlp_norm, self.mlp)


class TransformerStack(UnitModule):
    """``n_layers`` blocks plus the final norm; positions that act inside attention live here.

    Args:
        config: model configuration.
        causal: causal self-attention (decoders).
        cross_attend: each block also attends to an encoder output (encoder-decoder decoders).
        n_layers: number of blocks (default ``config.n_layers``).
    """

    def __init__(
        self,
        config: TransformerConfig,
        causal: bool,
        cross_attend: bool = False,
        n_layers: int | None = None,
    ) -> None:
        super().__init__(config.parametrization)
        n = n_layers or config.n_layers
        per_layer = ["attn", "attn", "mlp"] if cross_attend else ["attn", "mlp"]
        taus = residual_taus(per_layer * n, config.residual_mult, config.residual_attn_ratio)
        k = len(per_layer)
        self.layers = nn.ModuleList(
            Block(config, causal, cross_attend, taus[i * k : (i + 1) * k]) for i in range(n)
        )
        set_depth(self.layers, n)
        # Each layer's cross-attention reads the memory with its branch's backward weight;
        # this factor brings their sum back to unit RMS (one constant for every read, riding
        # in each read's key/value GEMM).
        cross = [taus[i * k + 1] for i in range(n)] if cross_attend else []
        self.memory_grad_scale = sum(t**2 / (1 + t**2) for t in cross) ** -0.5 if cross else 1.0
        if config.parametrization == "umup":
            for layer in self.layers:
                layer.memory_grad_mult = self.memory_grad_scale
        self.final_norm = make_norm(config)
        self.final_norm.monitor_role = "final_norm"
        self.causal = causal
        self.rope = (
            RotaryEmbedding(config.d_head, config.max_seq_len)
            if config.positions == "rope"
            else None
        )
        self.relative = (
            RelativePositionBias(
                config.n_heads,
                bidirectional=not causal,
                buckets=config.relative_buckets,
                max_distance=config.relative_max_distance,
                parametrization=config.parametrization,
            )
            if config.positions == "relative"
            else None
        )

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_key_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``x``: (batch, length, d_model). ``key_mask``/``memory_key_mask``: (batch, length)
        bool, True for real tokens. Causal stacks ignore ``key_mask``: with right padding no real
        query ever sees a padded key. With a ``cache`` (causal stacks), ``x`` holds the positions
        after the cached ones, already recorded by ``cache.extend``; its mask applies."""
        if cache is not None:
            return self._cached(x, cache, memory, memory_key_mask)
        mask = None
        if key_mask is not None and not self.causal:
            mask = key_mask[:, None, None, :]
        if self.relative is not None:
            bias = self.relative(x.shape[1], x.shape[1], x.device).to(x.dtype)
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            mask = bias.expand(x.shape[0], -1, -1, -1) if mask is not None else bias
        mem_mask = memory_key_mask[:, None, None, :] if memory_key_mask is not None else None
        for layer in self.layers:
            x = layer(x, mask=mask, memory=memory, memory_mask=mem_mask, rope=self.rope)
        return self.final_norm(x)

    def _cached(
        self, x: Tensor, cache: KVCache, memory: Tensor | None, memory_key_mask: Tensor | None
    ) -> Tensor:
        start, length = cache.offset, cache.length
        query = torch.arange(start, length, device=x.device)[:, None]
        key = torch.arange(length, device=x.device)[None, :]
        # Real queries see real keys up to themselves; a padding query sees itself alone, so
        # no row of the softmax is empty (an empty one would spread NaN through its values).
        mask = (key <= query) & (cache.key_mask[:, None, :] | (key == query))
        mask = mask[:, None]  # (batch, 1, new, length)
        if self.relative is not None:
            bias = self.relative(length, length, x.device)[:, :, start:].to(x.dtype)
            mask = bias.masked_fill(~mask, float("-inf"))
        mem_mask = memory_key_mask[:, None, None, :] if memory_key_mask is not None else None
        for layer in self.layers:
            x = layer(
                x, mask=mask, memory=memory, memory_mask=mem_mask, rope=self.rope, cache=cache
            )
        return self.final_norm(x)
