"""Statistics vectors and layer discovery on hand-made tensors and a tiny model."""

import math

import pytest
import torch

from lit_unitscale.callbacks.scale_layers import find_layers
from lit_unitscale.callbacks.scale_stats import fields, summarise, summary_fields, tensor_stats
from lit_unitscale.models import DecoderLM, EncoderMLM, Seq2SeqLM, TransformerConfig
from lit_unitscale.unit.fp8 import E4M3, E5M2, out_of_range_fractions

FORMATS = (E4M3, E5M2)


def test_out_of_range_counts_on_hand_made_tensor():
    # e4m3: min normal 2**-6, max 448; e5m2: min normal 2**-14, max 57344. Zero is neither.
    x = torch.tensor([0.0, 1e-6, 1e-3, 1.0, -2.0, 500.0, -1e5, 3.0])
    s = tensor_stats(x, FORMATS)
    got = dict(zip(fields(FORMATS), s.tolist(), strict=True))
    assert got["count"] == 8 and got["nonfinite"] == 0
    assert got["sumsq"] == pytest.approx(float((x.double() ** 2).sum()), rel=1e-6)
    assert (got["underflow_e4m3"], got["overflow_e4m3"]) == (2, 2)  # 1e-6, 1e-3 | 500, 1e5
    assert (got["underflow_e5m2"], got["overflow_e5m2"]) == (1, 1)  # 1e-6 | 1e5
    summary = dict(zip(summary_fields(FORMATS), summarise(s, FORMATS).tolist(), strict=True))
    assert summary["rms"] == pytest.approx(float(x.double().pow(2).mean().sqrt()), rel=1e-6)
    for fmt in FORMATS:
        under, over = out_of_range_fractions(x, fmt)
        assert summary[f"underflow_{fmt.name}"] == pytest.approx(float(under))
        assert summary[f"overflow_{fmt.name}"] == pytest.approx(float(over))


def test_non_finite_elements_are_counted():
    s = tensor_stats(torch.tensor([1.0, float("nan"), float("inf")]), FORMATS)
    assert s[2] == 2
    assert not math.isfinite(float(summarise(s, FORMATS)[0]))


def test_sums_over_shards_give_the_whole_tensor():
    x = torch.randn(1000) * 3
    parts = sum(tensor_stats(p, FORMATS) for p in x.split(300))
    assert torch.allclose(summarise(parts, FORMATS), summarise(tensor_stats(x, FORMATS), FORMATS))


@pytest.mark.parametrize("cls", [DecoderLM, EncoderMLM, Seq2SeqLM])
def test_layers_found_by_type(cls):
    cfg = TransformerConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
    model = cls(cfg)
    layers = find_layers(model)
    blocks = model.blocks()
    assert [layers[f"block{i}"] for i in range(len(blocks))] == blocks
    assert layers["head"] is model.head
    assert any(name.startswith("embed") for name in layers)
    assert any(name.startswith("final_norm") for name in layers)
    assert list(layers)[0].startswith("embed") and list(layers)[-1] == "head"
