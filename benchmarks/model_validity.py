"""Is each model one function of its input, with valid gradients? A table per configuration.

    python -m benchmarks.model_validity --quick    # one JSON line
    python -m benchmarks.model_validity            # the tables for docs/results.md

Columns: the worst cosine between a parameter's gradient and the true gradient of the same
forward (1.000000 when valid; tiny float64 models, d_model 8, 2 layers), the tensor it belongs
to, the initial loss over ln V (d_model 64, vocabulary 256, both parametrizations), and the
largest change of the logits (relative to their RMS) when a decoder input is cut to a prefix or
an encoder input is padded further.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.common import emit, machine
from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.models.checks import gradient_cosines, relative_error

CONFIGS = {
    "decoder, GELU, RoPE": ("DecoderLM", {}),
    "decoder, SwiGLU, RoPE": ("DecoderLM", {"mlp": "swiglu"}),
    "decoder, GELU, relative": ("DecoderLM", {"positions": "relative"}),
    "decoder, learned, tied": ("DecoderLM", {"positions": "learned", "tie_embeddings": True}),
    "decoder, RoPE, tied, GQA": ("DecoderLM", {"tie_embeddings": True, "n_kv_heads": 1}),
    "enc-dec, relative, own target vocab": (
        "Seq2SeqLM",
        {"positions": "relative", "tgt_vocab_size": 13},
    ),
    "enc-dec, RoPE, own target vocab": ("Seq2SeqLM", {"tgt_vocab_size": 13}),
    "enc-dec, RoPE, shared vocab, tied": ("Seq2SeqLM", {"tie_embeddings": True}),
    "encoder MLM, learned, affine LayerNorm": (
        "EncoderMLM",
        {"positions": "learned", "norm": "layer", "norm_affine": True},
    ),
    "classifier, sinusoidal, mean pool": ("SequenceClassifier", {"positions": "sinusoidal"}),
}


def _inputs(arch: str, model, vocab: int, batch: int, length: int, classes: int = 3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length // 2 :] = False  # one padded row: padding must count for nothing
    tgt_vocab = model.config.tgt_vocab_size or vocab
    if arch == "Seq2SeqLM":
        tgt = torch.randint(1, tgt_vocab, (batch, length - 1), generator=g)
        tgt_labels = torch.randint(0, tgt_vocab, (batch, length - 1), generator=g)
        return lambda m: m.loss(m(ids, tgt, mask), tgt_labels)
    # Labels drawn independently of the inputs: at init the loss is then ln V exactly when the
    # logits are near zero (a tied model would otherwise "predict" its own input tokens).
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    if arch == "DecoderLM":
        return lambda m: m.loss(m(ids), labels)
    if arch == "SequenceClassifier":
        y = torch.randint(0, classes, (batch,), generator=g)
        return lambda m: m.loss(m(ids, mask), y)
    return lambda m: m.loss(m(ids, mask), labels.masked_fill(~mask, -100))


def build(arch: str, overrides: dict, parametrization: str, d_model: int, vocab: int, seq: int):
    shape = {"n_layers": 2, "n_heads": 2, "ffn_mult": 2.0, **overrides}
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=d_model,
        max_seq_len=seq,
        parametrization=parametrization,
        num_labels=3 if arch == "SequenceClassifier" else 0,
        **shape,
    )
    return ARCHITECTURES[arch](config)


def worst_cosine(arch: str, overrides: dict) -> tuple[float, str]:
    torch.manual_seed(0)
    model = build(arch, overrides, "umup", 8, 17, 8).double()
    cos = gradient_cosines(model, _inputs(arch, model, 17, 3, 7))
    name = min(cos, key=cos.get)
    return cos[name], name


def initial_loss_ratio(arch: str, overrides: dict, parametrization: str) -> float:
    torch.manual_seed(0)
    overrides = {k: (v if k != "tgt_vocab_size" else 256) for k, v in overrides.items()}
    model = build(arch, overrides, parametrization, 64, 256, 32)
    with torch.no_grad():
        loss = _inputs(arch, model, 256, 8, 32)(model)
    classes = 3 if arch == "SequenceClassifier" else 256
    return float(loss) / math.log(classes)


def invariance_error(arch: str, overrides: dict) -> float:
    """Decoders: prefix vs full sequence. Encoders: one row alone vs padded to max_seq_len."""
    torch.manual_seed(0)
    model = build(arch, overrides, "umup", 64, 256, 32).eval()
    ids = torch.randint(1, 256, (2, 32))
    with torch.no_grad():
        if arch == "DecoderLM":
            return relative_error(model(ids[:, :8]), model(ids)[:, :8])
        if arch == "Seq2SeqLM":
            tgt = ids[:, :10] % (model.config.tgt_vocab_size or 256)
            alone = model(ids[:, :10], tgt)
            mask = torch.zeros(2, 32, dtype=torch.bool)
            mask[:, :10] = True
            padded = model(ids.masked_fill(~mask, 0), tgt, mask)
            prefix = model(ids[:, :10], tgt[:, :4])
            return max(relative_error(padded, alone), relative_error(prefix, alone[:, :4]))
        mask = torch.zeros(2, 32, dtype=torch.bool)
        mask[:, :10] = True
        alone = model(ids[:, :10], torch.ones(2, 10, dtype=torch.bool))
        padded = model(ids.masked_fill(~mask, 0), mask)
        if arch != "SequenceClassifier":
            padded = padded[:, :10]
        return relative_error(padded, alone)


def attention_rms_by_length(lengths: list[int], scale_len: int = 128) -> list[dict]:
    """RMS at init of every attention output (layer 0, and the median over layers) when the
    scale is fixed for ``scale_len`` keys and the input has another length: the price of a
    model that is one function of its input. d_model 256, 4 heads, 4 layers, batch 8."""
    from lit_unitscale.models.attention import Attention

    rows = []
    for arch in ("DecoderLM", "EncoderMLM"):
        torch.manual_seed(0)
        shape = {"n_layers": 4, "n_heads": 4, "ffn_mult": 4.0}
        model = build(arch, shape, "umup", 256, 512, scale_len)
        seen: list[float] = []

        def record(module, inputs, output, seen=seen) -> None:
            seen.append(float(output.pow(2).mean().sqrt()))

        for module in model.modules():
            if isinstance(module, Attention):
                module.register_forward_hook(record)
        for length in lengths:
            seen.clear()
            with torch.no_grad():
                model(torch.randint(0, 512, (8, length)))
            rows.append(
                {
                    "model": arch,
                    "length": length,
                    "layer0": round(seen[0], 3),
                    "median": round(sorted(seen)[len(seen) // 2], 3),
                }
            )
    return rows


def measure(names: list[str]) -> list[dict]:
    rows = []
    for label in names:
        arch, overrides = CONFIGS[label]
        cos, tensor = worst_cosine(arch, overrides)
        rows.append(
            {
                "config": label,
                "worst_cosine": round(cos, 6),
                "tensor": tensor if cos < 1 - 1e-6 else "-",
                "init_loss_over_lnV_umup": round(initial_loss_ratio(arch, overrides, "umup"), 3),
                "init_loss_over_lnV_sp": round(initial_loss_ratio(arch, overrides, "sp"), 3),
                "invariance_error": float(f"{invariance_error(arch, overrides):.2g}"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three configurations, one line")
    args = parser.parse_args()
    names = list(CONFIGS)[:3] if args.quick else list(CONFIGS)
    rows = measure(names)
    if args.quick:
        emit({"benchmark": "model_validity", "machine": machine(), "rows": rows})
        return
    print("| model (scale for 128 keys) | runtime length | attention RMS, layer 0 | median |")
    print("|---|---|---|---|")
    for r in attention_rms_by_length([8, 16, 32, 64, 128]):
        print(f"| {r['model']} | {r['length']} | {r['layer0']} | {r['median']} |")
    print()
    print(
        "| configuration (u-μP unless stated) | worst cosine | tensor | initial loss / ln V "
        "u-μP | SP | invariance error |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['worst_cosine']:.6f} | {r['tensor']} | "
            f"{r['init_loss_over_lnV_umup']} | {r['init_loss_over_lnV_sp']} | "
            f"{r['invariance_error']} |"
        )


if __name__ == "__main__":
    main()
