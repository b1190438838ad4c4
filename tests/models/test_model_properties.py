"""A model is one function of its unpadded input, with valid gradients, in every configuration.

Configurations are drawn with hypothesis: model kind × position kind × MLP × norm (RMS or
LayerNorm, affine or not) × tied embeddings × grouped-query attention × width × depth × both
parametrizations; lengths, paddings and batch mixes are drawn too.

- Invariance (fp32): a decoder's logits for every prefix equal the full sequence's first
  positions; an encoder's outputs for a sentence are the same alone, padded to any length up to
  ``max_seq_len`` and batched with longer or shorter sentences; an encoder-decoder's the same for
  source padding, and prefix-consistent on the target side. Tolerance: 1e-5 of the logits' RMS
  (measured worst ~1.5e-6: fp32 rounding through a few layers).
- Valid gradients (float64): every parameter tensor's gradient has cosine >= 1 - 1e-6 with the
  true gradient of the same forward. The true gradient comes from autograd with every scale a
  plain multiplication (``true_gradients``), which shares none of our backward scaling; that
  oracle is itself checked against central finite differences.
- Initial state: the initial loss is within 10 % of ln(classes) for both parametrizations, and
  under u-μP the embedding output has unit RMS and the logits d_model**-0.5 (the readout rule).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.models.checks import gradient_cosines, relative_error
from lit_unitscale.unit.scale import true_gradients

POSITIONS = ["rope", "learned", "sinusoidal", "relative", "none"]
ENCODERS = ["EncoderMLM", "SequenceClassifier", "TokenClassifier"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-5


@st.composite
def configs(
    draw, archs: list[str], parametrizations=("umup", "sp"), tiny: bool = False, head=(4, 8)
):
    arch = draw(st.sampled_from(archs))
    n_heads = draw(st.sampled_from([1, 2] if tiny else [2, 4]))
    d_model = n_heads * draw(st.sampled_from([4] if tiny else head))
    tied = arch in ("DecoderLM", "EncoderMLM", "Seq2SeqLM") and draw(st.booleans())
    norm = draw(st.sampled_from(["rms", "layer"]))
    config = TransformerConfig(
        vocab_size=draw(st.integers(11, 19)) if tiny else 64,
        d_model=d_model,
        n_layers=draw(st.integers(1, 2 if tiny else 3)),
        n_heads=n_heads,
        n_kv_heads=draw(st.sampled_from([None, 1])),
        ffn_mult=2.0,
        mlp=draw(st.sampled_from(["gelu", "swiglu"])),
        norm=norm,
        norm_affine=draw(st.booleans()),
        positions=draw(st.sampled_from(POSITIONS)),
        relative_buckets=8,
        relative_max_distance=16,
        max_seq_len=12 if tiny else 24,
        tie_embeddings=tied,
        parametrization=draw(st.sampled_from(parametrizations)),
        tgt_vocab_size=draw(st.sampled_from([None, 13])) if arch == "Seq2SeqLM" else None,
        n_decoder_layers=draw(st.sampled_from([None, 1])) if arch == "Seq2SeqLM" else None,
        num_labels=3 if arch in ENCODERS[1:] else 0,
        pooling=draw(st.sampled_from(["mean", "cls"])),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return arch, ARCHITECTURES[arch](config).eval()


def _ids(vocab: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length))


# --- one function of its input ----------------------------------------------------------------


@SETTINGS
@given(case=configs(["DecoderLM"]), data=st.data())
def test_decoder_prefix_consistent(case, data):
    _, model = case
    length = data.draw(st.integers(2, model.config.max_seq_len))
    ids = _ids(model.config.vocab_size, 2, length)
    with torch.no_grad():
        full = model(ids)
        for t in sorted(set(data.draw(st.lists(st.integers(1, length), min_size=1, max_size=4)))):
            assert relative_error(model(ids[:, :t]), full[:, :t]) <= TOL, t


def _padded(ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    pad = torch.zeros(ids.shape[0], length, dtype=ids.dtype)
    pad[:, : ids.shape[1]] = ids
    mask = torch.zeros(ids.shape[0], length, dtype=torch.bool)
    mask[:, : ids.shape[1]] = True
    return pad, mask


def _sentence_out(arch: str, out: torch.Tensor, row: int, length: int) -> torch.Tensor:
    return out[row] if arch == "SequenceClassifier" else out[row, :length]


@SETTINGS
@given(case=configs(ENCODERS), data=st.data())
def test_encoder_padding_and_batch_invariant(case, data):
    arch, model = case
    top = model.config.max_seq_len
    length = data.draw(st.integers(1, top))
    sentence = _ids(model.config.vocab_size, 1, length)
    others = data.draw(st.lists(st.integers(1, top), min_size=1, max_size=3))
    pad_to = data.draw(st.integers(max([length, *others]), top))
    position = data.draw(st.integers(0, len(others)))
    rows = [_ids(model.config.vocab_size, 1, n) for n in others]
    rows.insert(position, sentence)
    batch = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros(len(rows), pad_to, dtype=torch.bool)
    for i, r in enumerate(rows):
        batch[i, : r.shape[1]], mask[i, : r.shape[1]] = r[0], True
    with torch.no_grad():
        alone = _sentence_out(
            arch, model(sentence, torch.ones_like(sentence, dtype=bool)), 0, length
        )
        padded = _sentence_out(arch, model(*_padded(sentence, pad_to)), 0, length)
        batched = _sentence_out(arch, model(batch, mask), position, length)
    assert relative_error(padded, alone) <= TOL
    assert relative_error(batched, alone) <= TOL


@SETTINGS
@given(case=configs(["Seq2SeqLM"]), data=st.data())
def test_encoder_decoder_source_padding_and_target_prefix(case, data):
    _, model = case
    cfg = model.config
    src_len = data.draw(st.integers(1, cfg.max_seq_len))
    tgt_len = data.draw(st.integers(2, cfg.max_seq_len))
    pad_to = data.draw(st.integers(src_len, cfg.max_seq_len))
    src = _ids(cfg.vocab_size, 2, src_len)
    tgt = _ids(cfg.tgt_vocab_size or cfg.vocab_size, 2, tgt_len)
    with torch.no_grad():
        alone = model(src, tgt, torch.ones_like(src, dtype=bool))
        pad, mask = _padded(src, pad_to)
        assert relative_error(model(pad, tgt, mask), alone) <= TOL
        t = data.draw(st.integers(1, tgt_len))
        assert relative_error(model(pad, tgt[:, :t], mask), alone[:, :t]) <= TOL


# --- valid gradients ----------------------------------------------------------------------------


def _loss_fn(arch: str, model, batch: int = 3, length: int = 7):
    """Loss on random inputs and labels, with one padded row for the kinds that take a mask."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length // 2 :] = False
    if arch == "DecoderLM":
        labels = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
        return lambda m: m.loss(m(ids), labels)
    if arch == "Seq2SeqLM":
        tv = cfg.tgt_vocab_size or cfg.vocab_size
        tgt = torch.randint(1, tv, (batch, length - 2), generator=g)
        labels = torch.randint(0, tv, (batch, length - 2), generator=g)
        return lambda m: m.loss(m(ids, tgt, mask), labels)
    if arch == "SequenceClassifier":
        y = torch.randint(0, cfg.num_labels, (batch,), generator=g)
        return lambda m: m.loss(m(ids, mask), y)
    classes = cfg.num_labels or cfg.vocab_size
    labels = torch.randint(0, classes, (batch, length), generator=g).masked_fill(~mask, -100)
    return lambda m: m.loss(m(ids, mask), labels)


ALL_KINDS = ["DecoderLM", "Seq2SeqLM", *ENCODERS]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=configs(ALL_KINDS, parametrizations=("umup",), tiny=True))
def test_every_gradient_is_valid(case):
    arch, model = case
    model = model.double().train()
    cos = gradient_cosines(model, _loss_fn(arch, model))
    assert len(cos) == len(list(model.parameters()))
    worst = min(cos, key=cos.get)
    assert cos[worst] >= 1 - 1e-6, (worst, cos[worst])


@pytest.mark.parametrize(
    "arch,overrides",
    [
        ("DecoderLM", {"mlp": "swiglu", "positions": "relative", "tie_embeddings": True}),
        ("Seq2SeqLM", {"positions": "learned", "tie_embeddings": True, "n_kv_heads": 1}),
        ("SequenceClassifier", {"norm": "layer", "norm_affine": True, "num_labels": 3}),
    ],
)
def test_true_gradient_oracle_matches_finite_differences(arch, overrides):
    """The oracle above is autograd of the forward with scales as plain multiplications. Check it
    against central differences in float64: for every parameter tensor and two random
    directions v, (L(θ+εv) - L(θ-εv)) / 2ε equals <g, v> within 1e-6 relative."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=13,
        d_model=8,
        n_layers=2,
        n_heads=2,
        ffn_mult=2.0,
        max_seq_len=12,
        relative_buckets=8,
        relative_max_distance=16,
        **overrides,
    )
    model = ARCHITECTURES[arch](config).double()
    loss_fn = _loss_fn(arch, model)
    with true_gradients():
        model.zero_grad()
        loss_fn(model).backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        for _ in range(2):
            v = torch.randn_like(p)
            with torch.no_grad():
                p.add_(eps * v)
                up = float(loss_fn(model))
                p.sub_(2 * eps * v)
                down = float(loss_fn(model))
                p.add_(eps * v)
            fd, ad = (up - down) / (2 * eps), float((p.grad * v).sum())
            assert abs(fd - ad) <= 1e-6 * max(abs(ad), 1e-3), (name, fd, ad)


# --- initial state --------------------------------------------------------------------------------


@SETTINGS
@given(case=configs(ALL_KINDS, head=(8, 16)))
def test_initial_loss_and_scales(case):
    """Widths 16-64; 32 sequences, so the loss of a 3-class classifier is a mean over 32 draws."""
    arch, model = case
    cfg = model.config
    torch.manual_seed(1)
    classes = cfg.num_labels or (cfg.tgt_vocab_size or cfg.vocab_size)
    logits_seen = []
    handle = model.head.register_forward_hook(lambda m, i, o: logits_seen.append(o))
    embeds = []
    for module in model.modules():
        if getattr(module, "monitor_role", None) == "embed":
            module.register_forward_hook(lambda m, i, o: embeds.append(o))
    with torch.no_grad():
        loss = float(_loss_fn(arch, model, batch=32, length=cfg.max_seq_len)(model))
    handle.remove()
    assert abs(loss / math.log(classes) - 1) <= 0.10, (loss, math.log(classes))
    if cfg.parametrization == "umup":
        rms = [float(e.pow(2).mean().sqrt()) for e in embeds]
        assert all(0.8 <= r <= 1.25 for r in rms), rms
        logits = float(logits_seen[0].pow(2).mean().sqrt())
        assert 0.6 * cfg.d_model**-0.5 <= logits <= 1.4 * cfg.d_model**-0.5, logits
