"""Encoder export to transformers: the loaded model computes our logits on padded batches, and
the tokenizer loads with ``AutoTokenizer``; what no architecture computes is refused in a line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_unitscale.data.text_tokenizers import train_subword_tokenizer
from lit_unitscale.models import TransformerConfig
from lit_unitscale.models.architectures import (
    EncoderMLM,
    SequenceClassifier,
    TokenClassifier,
)
from lit_unitscale.models.hf import HFExportError, hf_architecture, save_hf

transformers = pytest.importorskip("transformers")

FIXTURE_TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "text" / "train.txt"
# Our model class → (transformers class, the Auto class that loads it, config overrides).
ENCODERS = {
    "EncoderMLM": ("EuroBertForMaskedLM", "AutoModelForMaskedLM", {}),
    "TokenClassifier": ("EuroBertForTokenClassification", "AutoModelForTokenClassification", {}),
    "SequenceClassifier": (
        "UltrabertForSequenceClassification",
        "AutoModelForSequenceClassification",
        {"pool_norm": False},
    ),
}
CLASSES = {cls.__name__: cls for cls in (EncoderMLM, TokenClassifier, SequenceClassifier)}
MAX_LEN = 64
# As for decoders: exact up to fp32 rounding and the norms' eps at the exported stream scale.
RTOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    lines = FIXTURE_TEXT.read_text().splitlines()
    return train_subword_tokenizer("wordpiece", lines, vocab_size=200).to_str()


def _encoder(name: str, vocab: int, parametrization: str, seed: int, **overrides):
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=32,
        n_heads=4,
        max_seq_len=MAX_LEN,
        num_labels=3,
        parametrization=parametrization,
        **{"n_layers": 2, "positions": "rope", "norm": "rms", **ENCODERS[name][2], **overrides},
    )
    model = CLASSES[name](config).eval()
    with torch.no_grad():
        # Trained-looking norms: gains away from their initial 1.
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / ours.pow(2).mean().sqrt())


def _padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([20, 13, 7])
    return torch.randint(0, vocab, (3, 20)), torch.arange(20)[None] < lengths[:, None]


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
@pytest.mark.parametrize("name", list(ENCODERS))
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    n_layers=st.integers(1, 3),
    mlp=st.sampled_from(["gelu", "swiglu"]),
    n_kv_heads=st.sampled_from([None, 2, 1]),
    dropout=st.sampled_from([0.0, 0.1]),
    attn_mult=st.floats(0.25, 4.0),
    ffn_act_mult=st.floats(0.25, 4.0),
    residual_mult=st.floats(0.25, 2.0),
    residual_attn_ratio=st.floats(0.25, 2.0),
    tie_embeddings=st.booleans(),
    norm_affine=st.booleans(),
    pooling=st.sampled_from(["cls", "mean"]),
)
def test_exported_encoder_logits_equal_ours_on_padded_batches(
    tmp_path: Path,
    tokenizer_json: str,
    name: str,
    parametrization: str,
    seed: int,
    **config,
) -> None:
    from tokenizers import Tokenizer

    native = Tokenizer.from_str(tokenizer_json)
    vocab = native.get_vocab_size()
    model = _encoder(name, vocab, parametrization, seed, **config)
    out = tmp_path / f"m{seed}"
    save_hf(model, out, tokenizer_json=tokenizer_json)
    architecture, auto, _ = ENCODERS[name]
    hf = getattr(transformers, auto).from_pretrained(out).eval()
    assert type(hf).__name__ == architecture == hf_architecture(model)
    ids, mask = _padded_batch(vocab)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
    if ours.dim() == 3:  # per-token logits: compare real tokens only
        real = mask[..., None].expand_as(ours)
        ours, theirs = ours[real], theirs[real]
    assert ours.shape == theirs.shape
    assert _relative_error(ours, theirs) < RTOL

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    text = "the king is dead , long live the king"
    assert tokenizer(text)["input_ids"] == native.encode(text).ids
    assert tokenizer.pad_token == "[PAD]" and hf.config.pad_token_id == tokenizer.pad_token_id
    if name == "EncoderMLM":
        assert tokenizer.mask_token == "[MASK]"
        assert hf.config.mask_token_id == tokenizer.mask_token_id


@pytest.mark.parametrize(
    "name, overrides, nearest",
    [
        ("EncoderMLM", {"norm": "layer"}, "positions='rope', norm='rms' (EuroBERT)"),
        ("TokenClassifier", {"positions": "learned"}, "positions='rope', norm='rms' (EuroBERT)"),
        ("SequenceClassifier", {"pool_norm": True}, "pool_norm=False (UltraBERT)"),
        ("SequenceClassifier", {"norm": "layer"}, "positions='rope', norm='rms' (UltraBERT)"),
    ],
)
def test_unexportable_encoders_name_the_nearest_exportable_configuration_in_one_line(
    name: str, overrides: dict, nearest: str
) -> None:
    model = _encoder(name, 11, "umup", 0, **overrides)
    with pytest.raises(HFExportError, match="nearest exportable") as error:
        hf_architecture(model)
    message = str(error.value)
    assert nearest in message and name in message and len(message.splitlines()) == 1
