"""A whole model with every scale folded into its kernels computes today's composed model:
logits, loss and every parameter gradient within 1e-6 relative, over drawn configurations of
every architecture in both parametrizations (float64: see tests/unit/test_fused_equals_composed).

The composed model is the frozen copy in ``tests/unit/composed_oracle`` (its own modules, stack,
attention and heads, each scale its own pass), loaded with the same weights. Under FP8
simulation and ``true_gradients`` the model keeps the composed path; both are checked as well.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.unit.composed_oracle.heads as composed
from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.unit import fp8
from lit_unitscale.unit.scale import true_gradients

TOL = 1e-6
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw) -> tuple[str, TransformerConfig]:
    arch = draw(st.sampled_from(sorted(ARCHITECTURES)))
    heads = draw(st.sampled_from([1, 2]))
    config = TransformerConfig(
        vocab_size=draw(st.integers(5, 30)),
        d_model=8 * heads * draw(st.sampled_from([1, 2])),
        n_layers=draw(st.integers(1, 3)),
        n_heads=heads,
        max_seq_len=12,
        positions=draw(st.sampled_from(["rope", "learned", "sinusoidal", "relative", "none"])),
        mlp=draw(st.sampled_from(["gelu", "swiglu"])),
        norm=draw(st.sampled_from(["rms", "layer"])),
        norm_affine=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
        parametrization=draw(st.sampled_from(["umup", "sp"])),
        residual_mult=draw(st.sampled_from([1.0, 0.5])),
        residual_attn_ratio=draw(st.sampled_from([1.0, 2.0])),
        attn_mult=draw(st.sampled_from([1.0, 0.7])),
        ffn_act_mult=draw(st.sampled_from([1.0, 1.6])),
        loss_mult=draw(st.sampled_from([1.0, 1.3])),
        num_labels=3,
        tgt_vocab_size=draw(st.sampled_from([None, 17])) if arch == "Seq2SeqLM" else None,
    )
    return arch, config


def _batch(arch: str, config: TransformerConfig, seed: int) -> tuple[tuple, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    if arch == "DecoderLM":
        return (ids,), ids
    if arch == "Seq2SeqLM":
        tgt = torch.randint(0, config.tgt_vocab_size or config.vocab_size, (2, 6), generator=g)
        return (ids, tgt, mask), tgt
    if arch == "SequenceClassifier":
        return (ids, mask), torch.tensor([0, 2])
    return (ids, mask), torch.randint(0, 3, (2, 10), generator=g)


def _step(model, inputs, labels):
    logits = model(*inputs)
    loss = model.loss(logits, labels)
    loss.backward()
    return [logits.detach(), loss.detach()] + [p.grad for _, p in model.named_parameters()]


def assert_composed(arch: str, config: TransformerConfig, context=contextlib.nullcontext):
    torch.manual_seed(0)
    fused = ARCHITECTURES[arch](config).double()
    oracle = getattr(composed, arch)(config).double()
    oracle.load_state_dict(fused.state_dict())
    inputs, labels = _batch(arch, config, seed=1)
    with context():
        got, want = _step(fused, inputs, labels), _step(oracle, inputs, labels)
    names = ["logits", "loss"] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got, want, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            # Relative to the tensor's norm, floored at 1e-6 (a gradient zero in exact
            # arithmetic, e.g. an unused table row, keeps only ~1e-16 rounding noise).
            err = ((a - b).norm() / b.norm().clamp_min(1e-6)).item()
            assert err <= TOL, (name, err)


@SETTINGS
@given(case=configs())
def test_fused_model_equals_composed(case):
    assert_composed(*case)


@pytest.mark.parametrize("arch", ["DecoderLM", "Seq2SeqLM"])
@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_rms_table_is_the_composed_models(arch, parametrization, monkeypatch):
    """The scale probe's table (every module output, its gradient, every weight gradient):
    row for row the composed model's, the folded constants reported where they belong."""
    import tests.unit.composed_oracle.attention as c_attention
    import tests.unit.composed_oracle.modules as c_modules
    import tests.unit.composed_oracle.stack as c_stack
    import tests.unit.composed_oracle.transformer as c_transformer
    from lit_unitscale.models import scale_probe

    config = TransformerConfig(
        vocab_size=30, d_model=32, n_layers=2, n_heads=2, max_seq_len=12, norm_affine=True,
        ffn_act_mult=1.6, parametrization=parametrization,
    )  # fmt: skip
    torch.manual_seed(0)
    fused = ARCHITECTURES[arch](config)
    oracle = getattr(composed, arch)(config)
    oracle.load_state_dict(fused.state_dict())
    inputs, labels = _batch(arch, config, seed=2)

    def run(model):
        return model.loss(model(*inputs), labels)

    got = scale_probe.probe_scales(fused, run)
    probed = (c_modules.Linear, c_attention.Attention, c_stack.MLP, c_stack.Block)
    monkeypatch.setattr(scale_probe, "PROBED", (*probed, c_transformer.TokenEmbedding))
    want = scale_probe.probe_scales(oracle, run)
    assert [(r.name, r.kind) for r in got] == [(r.name, r.kind) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.rms == pytest.approx(b.rms, rel=1e-5, abs=1e-12), (a.name, a.kind)


@pytest.mark.parametrize("arch", ["DecoderLM", "Seq2SeqLM", "EncoderMLM"])
@pytest.mark.parametrize("context", [fp8.fp8_matmuls, true_gradients], ids=["fp8", "true"])
def test_composed_paths_unchanged(arch, context):
    config = TransformerConfig(
        vocab_size=20, d_model=16, n_layers=2, n_heads=2, max_seq_len=12, norm_affine=True,
        attn_mult=0.7, ffn_act_mult=1.6, positions="relative", num_labels=3,
    )  # fmt: skip
    assert_composed(arch, config, context)


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_bf16_autocast_matches_composed(parametrization):
    """Under bf16 autocast the scaled linear casts its operands as autocast casts F.linear's.
    The two round differently (bf16(w) with the scale in the GEMM against bf16(scale * w)),
    so the bound is bf16's: 3e-2 of each tensor's norm, where a misplaced scale (>= 3 %
    off for any constant here, most of them 30 % or more) or a wrong dtype would not pass."""
    config = TransformerConfig(
        vocab_size=30, d_model=32, n_layers=2, n_heads=2, max_seq_len=12, norm_affine=True,
        parametrization=parametrization,
    )  # fmt: skip
    torch.manual_seed(0)
    fused = ARCHITECTURES["DecoderLM"](config)
    oracle = composed.DecoderLM(config)
    oracle.load_state_dict(fused.state_dict())
    inputs, labels = _batch("DecoderLM", config, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = _step(fused, inputs, labels), _step(oracle, inputs, labels)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() <= 3e-2
