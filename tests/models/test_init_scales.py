"""u-μP at initialisation: activations, activation gradients and weight gradients have RMS ≈ 1.

A 4-layer model of each kind (decoder, encoder, encoder-decoder): one forward/backward on random
tokens. Every tensor must lie in [0.5, 2] except those whose scale the published u-μP rules set
on purpose or cannot control statically; each of those is checked against its own predicted
value (Graphcore's reference TransformerDecoder shows the same pattern):
- readout logits: u-μP scales the output layer by 1/fan_in, so their RMS is ≈ d_model**-0.5;
- query projection gradients: at init attention is near-uniform, and the softmax passes little
  gradient back to the logits;
- MLP up-projection gradients: the down projection's ``to_output_scale`` constraint scales its
  input gradient by fan_in**-0.5 instead of fan_out**-0.5, i.e. by sqrt(d_model / d_ff) = 0.5;
- attention outputs after the first layer: the first near-uniform attention writes one shared
  vector to every position, so values become correlated across positions, and the rule (which
  assumes independent values) over-amplifies their average, by at most sqrt(length). In causal
  stacks the rule's log(length) term keeps this inside [0.5, sqrt(length)] for the attention
  output alone; in bidirectional stacks the excess also reaches the stream and, through the
  final norm, shrinks the stream's gradients by the same factor, so every activation and
  activation gradient from layer 1 on is bounded by [length**-0.5, length**0.5] there.
``sp`` (standard parametrization) is shown failing the main check.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.models.scale_probe import Row, probe_scales, table

B, T, V, D, FFN = 8, 32, 256, 64, 4.0
TOKENS = "decoder.embed.tokens.weight"


def run_model(arch: str, parametrization: str, positions: str = "rope") -> list[Row]:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=V,
        d_model=D,
        n_layers=4,
        n_heads=4,
        ffn_mult=FFN,
        max_seq_len=T,
        positions=positions,
        parametrization=parametrization,
    )
    model = ARCHITECTURES[arch](config)
    ids = torch.randint(0, V, (B, T))
    if arch == "Seq2SeqLM":
        return probe_scales(model, lambda m: m.loss(m(ids, ids), ids))
    return probe_scales(model, lambda m: m.loss(m(ids), ids))


def allowed_range(row: Row) -> tuple[float, float]:
    """The RMS interval u-μP promises at init for this tensor of the causal decoder (RoPE)."""
    if row.op == "readout" and row.kind == "act":
        return 0.75 * D**-0.5, 1.25 * D**-0.5
    if row.op == "q_proj" and row.kind != "act":
        return 0.005, 2.0
    if row.name.endswith("relative.weight"):
        return 0.05, 2.0  # a bias on near-uniform attention logits, like the q gradients
    if row.op == "up_proj" and row.kind != "act":
        return 0.5 * FFN**-0.5, 2.0
    correlated = row.layer is not None and row.layer > 0
    if correlated and row.op in ("attn", "attn_out_proj") and row.kind in ("act", "weight_grad"):
        return 0.5, math.sqrt(T)
    return 0.5, 2.0


def averaging_bound(row: Row) -> tuple[float, float]:
    """Looser bound where values are correlated across positions (bidirectional attention,
    absolute positions): an average over T positions is amplified by at most sqrt(T), and the
    final norm shrinks the stream gradient by the same factor."""
    lo, hi = allowed_range(row)
    return min(lo, 0.5) * T**-0.5, max(hi, T**0.5)


def _inside(row: Row, bounds=allowed_range) -> bool:
    lo, hi = bounds(row)
    return lo <= row.rms <= hi


def test_decoder_unit_scale_at_init() -> None:
    rows = run_model("DecoderLM", "umup")
    print("\n" + table(rows, f"u-μP init RMS: DecoderLM (RoPE), 4 layers, d_model={D}, T={T}"))
    assert len(rows) > 60
    bad = [(r.name, r.kind, round(r.rms, 3)) for r in rows if not _inside(r)]
    assert not bad, bad
    plain = [r for r in rows if allowed_range(r) == (0.5, 2.0)]
    assert len(plain) >= 0.6 * len(rows)


@pytest.mark.parametrize("arch", ["EncoderMLM", "Seq2SeqLM"])
def test_bidirectional_kinds_scale_at_init(arch: str) -> None:
    rows = run_model(arch, "umup")
    print("\n" + table(rows, f"u-μP init RMS: {arch}, 4 layers, d_model={D}, T={T}"))
    assert len(rows) > 60
    bad = [(r.name, r.kind, round(r.rms, 3)) for r in rows if not _inside(r, averaging_bound)]
    assert not bad, bad
    # Before any attention has mixed positions, the forward pass keeps the strict promise.
    first = [r for r in rows if r.kind == "act" and (r.op == "embed" or r.layer == 0)]
    first = [
        r
        for r in first
        if ".cross" not in r.name and r.op not in ("attn", "attn_out_proj", "block")
    ]
    assert len(first) >= 4 and all(_inside(r) for r in first), first
    params = [r for r in rows if r.kind not in ("act", "act_grad") and r.layer is None]
    assert params and all(_inside(r) for r in params), params


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "relative", "none"])
def test_positions_keep_unit_scale(positions: str) -> None:
    rows = run_model("DecoderLM", "umup", positions)
    embed = [r.rms for r in rows if r.op == "embed" and r.kind == "act"]
    assert embed and 0.8 <= embed[0] <= 1.25, embed
    assert all(_inside(r, averaging_bound) for r in rows)
    tables = [r for r in rows if r.kind in ("embedding_grad", "bias_grad")]
    assert tables and all(_inside(r) for r in tables if r.name != TOKENS), tables
    if positions in ("sinusoidal", "learned"):
        # Tokens + positions is a unit-scaled sum whose two gradients both carry its forward
        # factor 1/√2 (so a tied readout's gradient stays valid): the token table's band is
        # every table's [0.5, 2] times that 1/√2.
        (token,) = [r for r in tables if r.name == TOKENS]
        assert 0.5 * 2**-0.5 <= token.rms <= 2 * 2**-0.5, token


def test_sp_is_not_unit_scaled() -> None:
    rows = run_model("DecoderLM", "sp")
    outside = [r for r in rows if not 0.5 <= r.rms <= 2.0]
    # Standard init leaves many tensors far from unit scale (branch outputs ~0.1, etc.).
    assert len(outside) > len(rows) // 4, len(outside)
