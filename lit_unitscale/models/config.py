"""The typed configuration of every model lit_unitscale builds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from lit_unitscale.errors import ConfigError

__all__ = ["ConfigError", "TransformerConfig"]


@dataclass
class TransformerConfig:
    """Architecture and u-μP hyperparameters of a Transformer."""

    vocab_size: int = 0
    """Input vocabulary size (normally linked from the data module)."""
    d_model: int = 256
    """Residual-stream width."""
    n_layers: int = 4
    """Transformer layers (for encoder-decoder models: encoder layers)."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (None: same as n_heads); must divide n_heads."""
    ffn_mult: float = 4.0
    """MLP hidden width as a multiple of d_model."""
    mlp: Literal["gelu", "swiglu"] = "gelu"
    """MLP type: GELU MLP or SwiGLU."""
    norm: Literal["rms", "layer"] = "rms"
    """Pre-norm type: RMSNorm or LayerNorm."""
    norm_affine: bool = False
    """Learn per-element gains in norms (u-μP recommends non-parametric norms)."""
    positions: Literal["rope", "sinusoidal", "learned", "relative", "none"] = "rope"
    """Position encoding."""
    max_seq_len: int = 512
    """Longest sequence (learned/sinusoidal tables, RoPE cache)."""
    attn_scale_len: int | None = None
    """u-μP: key count the attention output scale is computed for (None: max_seq_len). The
    scale is a constant of the model, so outputs do not depend on runtime length or padding;
    attention outputs have unit RMS at init at this length (for a cross-attention: this many
    source tokens)."""
    relative_buckets: int = 32
    """Buckets of the T5-style relative position bias."""
    relative_max_distance: int = 128
    """Distance beyond which relative positions share a bucket."""
    dropout: float = 0.0
    """Dropout on embeddings, residual branches and attention probabilities."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection (LM heads)."""
    parametrization: Literal["umup", "sp"] = "umup"
    """umup: unit-scaled ops and u-μP init; sp: standard init and plain ops (for A/B runs)."""
    residual_mult: float = 1.0
    """u-μP: contribution of all residual branches relative to the embedding."""
    residual_attn_ratio: float = 1.0
    """u-μP: contribution of attention branches relative to MLP branches."""
    attn_mult: float = 1.0
    """u-μP: attention-logit multiplier (logits = mult * q.k / d_head)."""
    ffn_act_mult: float = 1.0
    """u-μP: multiplier inside the MLP nonlinearity."""
    loss_mult: float = 1.0
    """u-μP: multiplier on the logits inside the loss softmax."""
    n_decoder_layers: int | None = None
    """Encoder-decoder only: decoder layers (None: same as n_layers)."""
    tgt_vocab_size: int | None = None
    """Encoder-decoder only: target vocabulary (None: shared with the input)."""
    num_labels: int = 0
    """Classification heads only: number of classes."""
    pooling: Literal["cls", "mean"] = "mean"
    """Sequence classification: pool the first token or the mean over real tokens."""
    pool_norm: bool = True
    """Sequence classification: normalise the pooled vector before the head (pooling averages
    correlated tokens and shrinks their scale). False reads the pooled final-norm output out
    directly, as UltraBERT's classifier does, so the model exports to transformers."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def d_ff(self) -> int:
        return int(round(self.d_model * self.ffn_mult))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first impossible field."""
        if self.attn_scale_len is not None and self.attn_scale_len <= 0:
            raise ConfigError(
                f"model config: attn_scale_len must be > 0, got {self.attn_scale_len}"
            )
        for name in ("d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model config: {name} must be > 0, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ConfigError(f"model config: vocab_size must be >= 0, got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model config: n_heads={self.n_heads} does not divide d_model={self.d_model}"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model config: n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}"
            )
        if self.positions == "rope" and self.d_head % 2:
            raise ConfigError(f"model config: RoPE needs an even head width, got {self.d_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_mult <= 0:
            raise ConfigError(f"model config: ffn_mult must be > 0, got {self.ffn_mult}")
        if self.n_decoder_layers is not None and self.n_decoder_layers <= 0:
            raise ConfigError("model config: n_decoder_layers must be > 0")
        if self.parametrization not in ("umup", "sp"):
            raise ConfigError(
                "model config: parametrization must be 'umup' or 'sp', "
                f"got {self.parametrization!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}")
        return cls(**data)
