"""Behaviour of the shared stack: causality, padding, cross-attention, positions, config errors."""

from __future__ import annotations

import pytest
import torch

from lit_unitscale.models import (
    ConfigError,
    DecoderLM,
    EncoderMLM,
    Seq2SeqLM,
    SequenceClassifier,
    TokenClassifier,
    TransformerConfig,
)
from lit_unitscale.models.positions import RotaryEmbedding, relative_bucket
from lit_unitscale.unit import named_param_specs
from lit_unitscale.unit.functional import residual_taus


def tiny(**kw) -> TransformerConfig:
    base = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    return TransformerConfig(**{**base, **kw})


@pytest.mark.parametrize("positions", ["rope", "sinusoidal", "learned", "relative", "none"])
@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_decoder_is_causal(positions: str, parametrization: str) -> None:
    torch.manual_seed(0)
    model = DecoderLM(tiny(positions=positions, parametrization=parametrization)).eval()
    ids = torch.randint(0, 40, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 40
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=1e-5, atol=1e-5)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3  # later positions do see the change


@pytest.mark.parametrize("positions", ["rope", "learned", "relative"])
@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_encoder_masks_padding(positions: str, parametrization: str) -> None:
    torch.manual_seed(0)
    model = EncoderMLM(tiny(positions=positions, parametrization=parametrization)).eval()
    ids = torch.randint(1, 40, (1, 7))
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).bool()
    pad_a = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    pad_b = torch.cat([ids, torch.randint(1, 40, (1, 5))], dim=1)
    # Whatever sits in the padded positions, real tokens get the same outputs.
    torch.testing.assert_close(model(pad_a, mask)[:, :7], model(pad_b, mask)[:, :7])
    if parametrization == "sp":
        # Plain attention is also independent of the padded length. (Unit-scaled attention
        # scales by the static key length, padding included, by design.)
        torch.testing.assert_close(model(pad_a, mask)[:, :7], model(ids), rtol=1e-5, atol=1e-5)


def test_cross_attention_with_different_lengths_and_memory_padding() -> None:
    torch.manual_seed(0)
    model = Seq2SeqLM(tiny(tgt_vocab_size=25, n_decoder_layers=3)).eval()
    src = torch.randint(1, 40, (2, 9))
    tgt = torch.randint(0, 25, (2, 4))
    assert model(src, tgt).shape == (2, 4, 25)
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 3)], dim=1).bool()
    pad_a = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    pad_b = torch.cat([src, torch.randint(1, 40, (2, 3))], dim=1)
    torch.testing.assert_close(model(pad_a, tgt, mask), model(pad_b, tgt, mask))
    assert len(model.model.decoder.layers) == 3


def test_grouped_query_attention_has_fewer_kv_parameters() -> None:
    full = DecoderLM(tiny(n_heads=4))
    gqa = DecoderLM(tiny(n_heads=4, n_kv_heads=2))
    kv = lambda m: m.decoder.stack.layers[0].attn.kv.weight.shape[0]  # noqa: E731
    assert kv(full) == 2 * 32 and kv(gqa) == 32
    assert gqa(torch.randint(0, 40, (2, 5))).shape == (2, 5, 40)


def test_depth_rule_covers_cross_attention() -> None:
    # Alternating stacks are checked against the reference library's rule in
    # tests/unit/test_unit_conformance.py. Three branches per layer: the residual stream's
    # variance after all of them is 1 + alpha_attn**2 + alpha_mlp**2, exactly as for two (all
    # attention branches together contribute alpha_attn**2).
    taus = residual_taus(["attn", "attn", "mlp"] * 3, 1.0, 1.0)
    var = 1.0
    for t in taus:
        var *= 1 + t**2
    assert var == pytest.approx(3.0, rel=1e-9)


def test_stack_parameters_record_depth_and_roles() -> None:
    model = DecoderLM(tiny(n_layers=3, norm_affine=True))
    specs = {name: spec for name, _, spec in named_param_specs(model)}
    assert specs["decoder.stack.layers.1.attn.q.weight"].depth == 3
    assert specs["decoder.stack.layers.1.attn.q.weight"].role == "weight"
    assert specs["decoder.stack.layers.1.mlp_norm.weight"].role == "norm"
    assert specs["decoder.embed.tokens.weight"].role == "embedding"
    assert specs["decoder.embed.tokens.weight"].depth is None
    assert specs["head.proj.weight"].role == "output"
    assert len(specs) == len(list(model.parameters()))


def test_tied_embeddings_share_one_parameter() -> None:
    model = DecoderLM(tiny(tie_embeddings=True))
    assert model.head.proj is None
    assert sum(1 for _ in model.parameters()) == len(list(named_param_specs(model)))
    model(torch.randint(0, 40, (1, 4))).sum().backward()
    assert model.decoder.embed.tokens.weight.grad is not None


def test_rope_preserves_norm_and_depends_on_relative_position() -> None:
    rope = RotaryEmbedding(8, 32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    at = lambda x, p: rope(x, offset=p)  # noqa: E731
    torch.testing.assert_close(at(q, 5).norm(), q.norm())
    dot = lambda i, j: (at(q, i) * at(k, j)).sum()  # noqa: E731
    torch.testing.assert_close(dot(3, 1), dot(10, 8), rtol=1e-4, atol=1e-5)


def test_relative_buckets_hand_checked() -> None:
    rel = torch.tensor([-200, -20, -3, 0, 3, 20, 200])
    # Bidirectional, 32 buckets, max distance 128: 16 per direction (future offset by 16),
    # exact below 8; |20| -> 8 + floor(log(20/8) / log(128/8) * 8) = 8 + 2 = 10; |200| -> 15.
    assert relative_bucket(rel, True, 32, 128).tolist() == [15, 10, 3, 0, 19, 26, 31]
    # Causal: 32 buckets for the past, exact below 16; 20 -> 16 + floor(log(20/16) / log(8)
    # * 16) = 17; 200 -> 31; the future collapses to bucket 0.
    assert relative_bucket(rel, False, 32, 128).tolist() == [31, 17, 3, 0, 0, 0, 0]


def test_classifier_heads_shapes_and_pooling() -> None:
    ids, mask = torch.randint(1, 40, (3, 6)), torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    for pooling in ("mean", "cls"):
        logits = SequenceClassifier(tiny(num_labels=2, pooling=pooling))(ids, mask)
        assert logits.shape == (3, 2)
    assert TokenClassifier(tiny(num_labels=5))(ids, mask).shape == (3, 6, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "n_heads": 4}, "n_heads=4 does not divide d_model=30"),
        ({"n_kv_heads": 3}, "n_kv_heads=3 does not divide n_heads=4"),
        ({"n_layers": 0}, "n_layers must be > 0"),
        ({"d_model": -8}, "d_model must be > 0"),
        ({"dropout": 1.5}, "dropout must be in [0, 1)"),
        ({"parametrization": "mup"}, "parametrization must be 'umup' or 'sp'"),
    ],
)
def test_impossible_configs_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        tiny(**kwargs)


def test_classifier_needs_labels() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        SequenceClassifier(tiny(num_labels=0))


def test_generation_from_a_single_token_prompt() -> None:
    # Causal unit-scaled attention over one key must be defined (it is the value itself).
    from lit_unitscale.tasks.causal_lm import CausalLM

    task = CausalLM(tiny())
    task.configure_model()
    out = task.generate(torch.tensor([[3]]), max_new_tokens=4, temperature=0)
    assert out.shape == (1, 5) and out[0, 0] == 3
