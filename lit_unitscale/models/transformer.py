"""Encoder, Decoder and EncoderDecoder: thin compositions of :class:`TransformerStack`."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unitscale.errors import ConfigError
from lit_unitscale.models.attention import KVCache
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
            raise ConfigError("model config: vocab_size must be > 0 (is the data module linked?)")
        self.tokens = Embedding(vocab_size, config.d_model, parametrization=config.parametrization)
        self.positions = (
            AbsolutePositions(
                config.positions, config.max_seq_len, config.d_model, config.parametrization
            )
            if config.positions in ("sinusoidal", "learned")
            else None
        )
        self.dropout_p = config.dropout

    def forward(
        self, ids: Tensor, tokens: int | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """``tokens``: lookups of these tables in the whole step, when they are read more than
        once (an encoder-decoder with one vocabulary); None: this call's. ``positions``:
        ``(batch, length)`` absolute position of each token (None: ``0 ...`` in every row)."""
        x = self.tokens(ids, tokens)
        if self.positions is not None and positions is not None:
            # Per-row positions (left-padded prompts, cached steps): the same tables, indexed.
            table = self.positions
            if table.kind == "learned":
                pos = table.table(positions, tokens)
            else:
                pos = table.sinusoid[positions]
            x = self.F.add(x, pos.to(x.dtype))
        elif self.positions is not None:
            x = self.positions(x, tokens=tokens)
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

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, tokens: int | None = None
    ) -> Tensor:
        """``tokens``: lookups of the embedding in the whole step (None: this call's)."""
        return self.stack(self.embed(input_ids, tokens), key_mask=attention_mask)


class Decoder(UnitModule):
    """Causal Transformer: ids → hidden states (GPT-like).

    Args:
        config: model configuration.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.parametrization)
        self.embed = TokenEmbedding(config, config.vocab_size)
        self.stack = TransformerStack(config, causal=True)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``attention_mask``: (batch, length) True for real tokens, False for left padding
        (read only with a ``cache``). ``cache``: decode incrementally, ``input_ids`` being the
        tokens after the cached ones."""
        if cache is None:
            return self.stack(self.embed(input_ids))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        positions = cache.extend(attention_mask)
        return self.stack(self.embed(input_ids, positions=positions), cache=cache)


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
        self.tgt_embed = None if self.shared_embedding else TokenEmbedding(config, tgt_vocab)
        self.decoder = TransformerStack(
            config, causal=True, cross_attend=True, n_layers=config.n_decoder_layers
        )

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, tokens: int | None = None
    ) -> Tensor:
        """``tokens``: lookups of the shared embedding in the whole step (None: this call's)."""
        x = self.encoder.embed(input_ids, tokens)
        if self.shared_embedding and self.parametrization == "umup":
            # The memory's gradient is scaled by memory_grad_scale (see decode); undo it on the
            # path back to a table the decoder also reads, so both reads stay alike. Its own
            # pass (encoder-decoders with one vocabulary only): folded into the table's scatter
            # instead, it would move the embedding output's monitored gradient.
            x = self.F.scale_bwd(x, 1 / self.decoder.memory_grad_scale)
        return self.encoder.stack(x, key_mask=attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        tokens: int | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Every decoder layer's cross-attention reads ``memory``; each read carries its
        branch's backward weight (``residual_read``), so the summed gradient is valid, and one
        constant brings the sum back to unit RMS.
        ``tokens``: lookups of the shared embedding in the whole step (None: this call's).
        ``cache``: decode incrementally, ``decoder_input_ids`` being the tokens after the
        cached ones (the memory's keys and values are computed on the first call only)."""
        embed = self.encoder.embed if self.shared_embedding else self.tgt_embed
        # The decoder stack applies memory_grad_scale in each read's key/value GEMM.
        if cache is None:
            x = embed(decoder_input_ids, tokens)
            return self.decoder(x, memory=memory, memory_key_mask=memory_mask)
        positions = cache.extend(torch.ones_like(decoder_input_ids, dtype=torch.bool))
        x = embed(decoder_input_ids, tokens, positions=positions)
        return self.decoder(x, memory=memory, memory_key_mask=memory_mask, cache=cache)

    def table_reads(self, input_ids: Tensor, decoder_input_ids: Tensor) -> int | None:
        """Lookups of the shared embedding in one step (None when each side has its own):
        both reads then carry the same backward factor."""
        if not self.shared_embedding:
            return None
        return input_ids.numel() + decoder_input_ids.numel()

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        tokens = self.table_reads(input_ids, decoder_input_ids)
        memory = self.encode(input_ids, attention_mask, tokens)
        return self.decode(decoder_input_ids, memory, attention_mask, tokens)
