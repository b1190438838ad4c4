"""The complete models: causal LM, masked LM, sequence-to-sequence, sequence and token
classifiers, and ``ARCHITECTURES``, which names them in exported configs.

Each is a backbone from :mod:`lit_unitscale.models.transformer` plus an output projection.
``forward`` returns logits; ``loss`` applies the parametrization's cross entropy (unit-scaled
under umup).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_unitscale.errors import ConfigError
from lit_unitscale.models.attention import KVCache
from lit_unitscale.models.config import TransformerConfig
from lit_unitscale.models.stack import TransformerStack, make_norm
from lit_unitscale.models.transformer import Decoder, Encoder, EncoderDecoder
from lit_unitscale.unit import LinearReadout, UnitModule
from lit_unitscale.unit.kernels import MatmulFormat


class TransformerModel(UnitModule):
    """Base of the complete models: a backbone and an output projection, with the loss and the
    block list that strategies shard and checkpoint.

    Args:
        config: the architecture.
    """

    # Methods that callers use instead of ``forward`` (e.g. decoding step by step); a sharding
    # wrapper must gather parameters around them as it does around ``forward``.
    entry_methods: tuple[str, ...] = ()

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        self.config = config

    def loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean cross entropy over non-ignored targets."""
        return self.F.cross_entropy(
            # At least fp32 (low-precision logits), float64 stays float64.
            logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32)),
            labels.flatten(),
            ignore_index=ignore_index,
            mult=self.config.loss_mult,
        )

    def blocks(self) -> list[nn.Module]:
        """The Transformer blocks, for per-block sharding and activation checkpointing."""
        return [
            layer
            for module in self.modules()
            if isinstance(module, TransformerStack)
            for layer in module.layers
        ]


class OutputProjection(UnitModule):
    """Output projection, optionally tied to an embedding table.

    Args:
        config: the architecture.
        out_features: logits per position (vocabulary size or classes).
        tied: an embedding module whose table is read out instead of an own weight.

    ``matmul`` is how a tied table is read out (an own weight's layer has its own).
    """

    monitor_role = "head"
    matmul: MatmulFormat = None

    def __init__(self, config: TransformerConfig, out_features: int, tied: nn.Module | None = None):
        super().__init__(config.parametrization)
        self.tied = tied
        self.proj = (
            None
            if tied is not None
            else LinearReadout(config.d_model, out_features, parametrization=config.parametrization)
        )
        if tied is not None and config.parametrization == "sp":
            # A plain N(0, 1) table read out unscaled gives logits of std √d_model (initial
            # loss ~30x ln V at d 256); a tied table starts as GPT-2 and transformers start it.
            nn.init.normal_(tied.weight, std=0.02)

    def forward(self, h: Tensor, tokens: int | None = None) -> Tensor:
        """``tokens``: reads of a tied table in the whole step (None: this call's)."""
        if self.tied is not None:
            return self.F.linear_readout(
                h, self.tied.weight, None, tokens=tokens, matmul=self.matmul
            )
        return self.proj(h)


class DecoderLM(TransformerModel):
    """GPT-like causal language model.

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.decoder = Decoder(config)
        tied = self.decoder.embed.tokens if config.tie_embeddings else None
        self.head = OutputProjection(config, config.vocab_size, tied)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``attention_mask`` (False: left padding) and ``cache``: see :class:`KVCache`."""
        return self.head(self.decoder(input_ids, attention_mask, cache))


class EncoderMLM(TransformerModel):
    """BERT-like masked language model.

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config)
        tied = self.encoder.embed.tokens if config.tie_embeddings else None
        self.head = OutputProjection(config, config.vocab_size, tied)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


class Seq2SeqLM(TransformerModel):
    """T5-like encoder-decoder with a language-model head over the target vocabulary.

    Args:
        config: model configuration.
    """

    entry_methods = ("encode", "decode_logits")

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.model = EncoderDecoder(config)
        tgt_vocab = config.tgt_vocab_size or config.vocab_size
        tied = None
        if config.tie_embeddings:
            embed = (
                self.model.encoder.embed if self.model.shared_embedding else self.model.tgt_embed
            )
            tied = embed.tokens
        self.head = OutputProjection(config, tgt_vocab, tied)

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        hidden = self.model(input_ids, decoder_input_ids, attention_mask)
        # A table shared by both sides and tied to the readout: all three reads count alike.
        return self.head(hidden, self.model.table_reads(input_ids, decoder_input_ids))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model.encode(input_ids, attention_mask)

    def decode_logits(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``cache``: decode incrementally (see :class:`KVCache`)."""
        return self.head(self.model.decode(decoder_input_ids, memory, memory_mask, cache=cache))


class SequenceClassifier(TransformerModel):
    """Encoder + pooled classification head.

    Args:
        config: model configuration (``num_labels``, ``pooling``, ``pool_norm``).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        if config.num_labels < 2:
            raise ConfigError("model config: num_labels must be >= 2 for a classifier")
        self.encoder = Encoder(config)
        # Pooling averages correlated tokens and shrinks their scale; a norm restores it.
        self.pool_norm = make_norm(config) if config.pool_norm else None
        self.head = LinearReadout(
            config.d_model, config.num_labels, parametrization=config.parametrization
        )
        self.head.monitor_role = "head"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.encoder(input_ids, attention_mask)
        if self.config.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = attention_mask.to(h.dtype)[..., None] if attention_mask is not None else None
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1) if m is not None else h.mean(1)
        return self.head(self.pool_norm(pooled) if self.pool_norm is not None else pooled)


class TokenClassifier(TransformerModel):
    """Encoder + per-token classification head (tagging, NER).

    Args:
        config: model configuration (``num_labels``).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        if config.num_labels < 2:
            raise ConfigError("model config: num_labels must be >= 2 for a tagger")
        self.encoder = Encoder(config)
        self.head = LinearReadout(
            config.d_model, config.num_labels, parametrization=config.parametrization
        )
        self.head.monitor_role = "head"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


ARCHITECTURES: dict[str, type[TransformerModel]] = {
    cls.__name__: cls
    for cls in (DecoderLM, EncoderMLM, Seq2SeqLM, SequenceClassifier, TokenClassifier)
}
