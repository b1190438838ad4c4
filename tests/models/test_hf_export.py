"""Export to transformers: the loaded model computes our logits and greedy continuations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_unitscale.models import TransformerConfig
from lit_unitscale.models.architectures import ARCHITECTURES, DecoderLM
from lit_unitscale.models.hf import ENCODERS, HFExportError, hf_architecture, save_hf

transformers = pytest.importorskip("transformers")

# (positions, norm, mlp, n_kv_heads) → the transformers class it exports to.
DECODERS = {
    ("rope", "rms", "gelu", None): "LlamaForCausalLM",
    ("rope", "rms", "swiglu", 1): "LlamaForCausalLM",
    ("rope", "layer", "gelu", None): "GPTNeoXForCausalLM",
    ("learned", "layer", "gelu", None): "GPT2LMHeadModel",
}
VOCAB, MAX_LEN = 53, 64
# Folding is exact up to fp32 rounding and the norms' eps, which sees the stream at the
# exported scale (≤ ~1e-5 of the output at eps 1e-5).
RTOL = 1e-4


def _decoder(key: tuple, parametrization: str, seed: int, **overrides) -> DecoderLM:
    positions, norm, mlp, kv = key
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_heads=4,
        n_kv_heads=kv,
        max_seq_len=MAX_LEN,
        positions=positions,
        norm=norm,
        mlp=mlp,
        parametrization=parametrization,
        **{"n_layers": 2, **overrides},
    )
    model = DecoderLM(config).eval()
    with torch.no_grad():
        # Trained-looking norms: gains and biases away from their initial 1 and 0.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _export_and_load(model: DecoderLM, out: Path):
    save_hf(model, out)
    return transformers.AutoModelForCausalLM.from_pretrained(out).eval()


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / ours.pow(2).mean().sqrt())


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
@pytest.mark.parametrize("key", list(DECODERS), ids=["-".join(map(str, k)) for k in DECODERS])
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    n_layers=st.integers(1, 3),
    dropout=st.sampled_from([0.0, 0.1]),
    attn_mult=st.floats(0.25, 4.0),
    ffn_act_mult=st.floats(0.25, 4.0),
    residual_mult=st.floats(0.25, 2.0),
    residual_attn_ratio=st.floats(0.25, 2.0),
    tie_embeddings=st.booleans(),
    norm_affine=st.booleans(),
)
def test_exported_logits_equal_ours_on_padded_batches(
    tmp_path: Path, key: tuple, parametrization: str, seed: int, **config
) -> None:
    model = _decoder(key, parametrization, seed, **config)
    hf = _export_and_load(model, tmp_path / f"m{seed}")
    assert type(hf).__name__ == DECODERS[key] == hf_architecture(model)
    lengths = torch.tensor([20, 13, 7])
    ids = torch.randint(0, VOCAB, (3, 20))
    mask = torch.arange(20)[None] < lengths[:, None]
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
    real = mask[..., None].expand_as(ours)
    assert _relative_error(ours[real], theirs[real]) < RTOL


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
@pytest.mark.parametrize("key", list(DECODERS), ids=["-".join(map(str, k)) for k in DECODERS])
def test_transformers_generate_equals_our_greedy_loop(
    tmp_path: Path, key: tuple, parametrization: str
) -> None:
    model = _decoder(key, parametrization, seed=7, dropout=0.1, attn_mult=2.0)
    hf = _export_and_load(model, tmp_path / "m")
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (9, 4)]
    width = max(len(p) for p in prompts)
    # transformers generates decoder-only batches left-padded.
    ids = torch.stack(
        [torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts]
    )
    mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts]).long()
    with torch.no_grad():
        generated = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, width:]
        for row, prompt in enumerate(prompts):
            tokens = prompt[None]
            for _ in range(32):
                tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], dim=1)
            assert generated[row].tolist() == tokens[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "overrides, nearest",
    [
        ({"positions": "sinusoidal"}, "positions='rope', norm='rms'"),
        ({"positions": "rope", "norm": "layer", "mlp": "swiglu"}, "GPT-NeoX"),
        ({"positions": "none"}, "positions='rope', norm='rms'"),
        ({"positions": "learned", "norm": "layer", "mlp": "swiglu"}, "GPT-2"),
    ],
)
def test_unexportable_decoders_name_the_nearest_exportable_configuration(
    overrides: dict, nearest: str
) -> None:
    model = DecoderLM(TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, **overrides))
    with pytest.raises(HFExportError, match="nearest exportable") as error:
        hf_architecture(model)
    assert nearest in str(error.value)


@pytest.mark.parametrize(
    "name", sorted(set(ARCHITECTURES) - {"DecoderLM"} - {cls.__name__ for cls in ENCODERS})
)
def test_other_model_kinds_say_what_exports(name: str) -> None:
    config = TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, num_labels=3)
    with pytest.raises(HFExportError, match="exportable: DecoderLM"):
        hf_architecture(ARCHITECTURES[name](config))
