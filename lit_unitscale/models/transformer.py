"""Encoder, Decoder and EncoderDecoder: thin compositions of :class:`TransformerStack`."""

from __future__ import annotations

from torch import Tensor

from lit_unitscale.models.config import TransformerConfig
from lit_unitscale.models.positions import AbsolutePositions
from lit_unitscale.models.stack import TransformerStack
from lit_unitscale.unit import Embedding, UnitModule


class TokenEmbedding(UnitModule):
    """Token lookup plus absolute positions (when configured) and dropout.

    Args:
        config: model configuration.
        vocab_size: table size.
    """

    monitor_role = "embed"

    def __init__(self, config: TransformerConfig, vocab_size: int) -> None:
        super().__init__(config.parametrization)
        if vocab_size <= 0:
            raise ValueError("model config: vocab_size must be > 0 (is the data module linked?)")
        self.tokens = Embedding(vocab_size, config.d_model, parametrization=config.parametrization)
        self.positions = (
            AbsolutePositions(
                config.positions, config.max_seq_len, config.d_model, config.parametrization
            )
            if config.positions in ("sinusoidal", "learned")
            else None
        )
        self.dropout_p = config.dropout
        self.uses = 1  # how many inputs share this table (encoder-decoders with one vocabulary)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.tokens(ids)
        if self.uses > 1 and self.parametrization == "umup":
            # The table's gradient sums one unit-scaled contribution per use.
            x = self.F.scale_bwd(x, self.uses**-0.5)
        if self.positions is not None:
            x = self.positions(x)
        return self.F.dropout(x, self.dropout_p, self.training)


class Encoder(UnitModule):
    """Bidirectional Transformer: ids → hidden states (BERT-like).

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        self.embed = TokenEmbedding(config, config.vocab_size)
        self.stack = TransformerStack(config, causal=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.stack(self.embed(input_ids), key_mask=attention_mask)


class Decoder(UnitModule):
    """Causal Transformer: ids → hidden states (GPT-like).

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        self.embed = TokenEmbedding(config, config.vocab_size)
        self.stack = TransformerStack(config, causal=True)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.stack(self.embed(input_ids))


class EncoderDecoder(UnitModule):
    """Encoder plus a causal decoder that cross-attends to it (T5-like).

    Args:
        config: model configuration; ``tgt_vocab_size`` sets a separate target vocabulary.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        self.encoder = Encoder(config)
        tgt_vocab = config.tgt_vocab_size or config.vocab_size
        self.shared_embedding = config.tgt_vocab_size is None
        if self.shared_embedding:
            self.encoder.embed.uses = 2
        self.tgt_embed = None if self.shared_embedding else TokenEmbedding(config, tgt_vocab)
        self.decoder = TransformerStack(
            config, causal=True, cross_attend=True, n_layers=config.n_decoder_layers
        )

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.encoder(input_ids, attention_mask)

    def decode(
        self, decoder_input_ids: Tensor, memory: Tensor, memory_mask: Tensor | None = None
    ) -> Tensor:
        embed = self.encoder.embed if self.shared_embedding else self.tgt_embed
        if self.parametrization == "umup":
            # Every decoder layer reads the memory: its gradient sums len(layers) unit-scaled
            # contributions, so scale it back to unit.
            memory = self.F.scale_bwd(memory, len(self.decoder.layers) ** -0.5)
        return self.decoder(embed(decoder_input_ids), memory=memory, memory_key_mask=memory_mask)

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask)
