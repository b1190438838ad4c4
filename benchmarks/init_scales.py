"""Scale table at initialisation: RMS of every activation, activation gradient and weight
gradient across widths and depths, for the three model kinds, u-μP beside SP.

    python benchmarks/init_scales.py --quick               # one JSON line, ~1 minute
    python benchmarks/init_scales.py --out docs/results    # table + plot for docs/results.md

For each configuration the summary is the spread of log2 RMS over all recorded tensors
(the readout logits excluded: u-μP scales them by 1/fan_in on purpose) and the fraction of
tensors inside [0.5, 2].
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from benchmarks.common import emit, machine
from lit_unitscale.models import ARCHITECTURES, TransformerConfig
from lit_unitscale.models.scale_probe import probe_scales

KINDS = {"decoder": "DecoderLM", "encoder": "EncoderMLM", "encoder-decoder": "Seq2SeqLM"}


def measure(kind: str, parametrization: str, width: int, depth: int, batch: int, seq: int) -> dict:
    torch.manual_seed(0)
    vocab = 512
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=width,
        n_layers=depth,
        n_heads=max(1, width // 64),
        max_seq_len=seq,
        parametrization=parametrization,
    )
    model = ARCHITECTURES[KINDS[kind]](config)
    ids = torch.randint(0, vocab, (batch, seq))
    if kind == "encoder-decoder":
        rows = probe_scales(model, lambda m: m.loss(m(ids, ids), ids))
    else:
        rows = probe_scales(model, lambda m: m.loss(m(ids), ids))
    values = [r.rms for r in rows if not (r.op == "readout" and r.kind == "act") and r.rms > 0]
    logs = [math.log2(v) for v in values]
    return {
        "kind": kind,
        "parametrization": parametrization,
        "width": width,
        "depth": depth,
        "tensors": len(values),
        "inside_0.5_2_pct": round(100 * sum(0.5 <= v <= 2 for v in values) / len(values), 1),
        "min_rms": round(min(values), 4),
        "max_rms": round(max(values), 4),
        "log2_spread": round(max(logs) - min(logs), 2),
        "median_rms": round(sorted(values)[len(values) // 2], 3),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, axis in zip(axes, ("width", "depth"), strict=True):
        for p, style in (("umup", "-"), ("sp", "--")):
            for kind in KINDS:
                pts = sorted(
                    (r[axis], r["inside_0.5_2_pct"])
                    for r in rows
                    if r["parametrization"] == p and r["kind"] == kind and r["sweep"] == axis
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{p} {kind}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of tensors with RMS in [0.5, 2] at init")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=None, help="write init_scales.{json,md,png} here"
    )
    args = parser.parse_args()
    widths, depths, base_w, base_d = [64, 128, 256, 512, 1024], [2, 4, 8, 16, 24], 256, 4
    batch, seq = 4, 64
    if args.quick:
        widths, depths, base_w, batch, seq = [64, 128, 256], [2, 4, 8], 128, 2, 32
    rows = []
    for kind in KINDS:
        for p in ("umup", "sp"):
            for w in widths:
                rows.append({**measure(kind, p, w, base_d, batch, seq), "sweep": "width"})
            for d in depths:
                rows.append({**measure(kind, p, base_w, d, batch, seq), "sweep": "depth"})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "init_scales.json").write_text(json.dumps(rows, indent=1))
        lines = [
            "| kind | param. | width | depth | tensors | % in [0.5, 2] | min RMS | max RMS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['kind']} | {r['parametrization']} | {r['width']} | {r['depth']} | "
            f"{r['tensors']} | {r['inside_0.5_2_pct']} | {r['min_rms']} | {r['max_rms']} |"
            for r in rows
        ]
        (args.out / "init_scales.md").write_text("\n".join(lines) + "\n")
        plot(rows, args.out / "init_scales.png")
    summary = {
        p: {
            "min_pct_inside": min(r["inside_0.5_2_pct"] for r in rows if r["parametrization"] == p),
            "median_pct_inside": sorted(
                r["inside_0.5_2_pct"] for r in rows if r["parametrization"] == p
            )[len([r for r in rows if r["parametrization"] == p]) // 2],
        }
        for p in ("umup", "sp")
    }
    emit(
        {"benchmark": "init_scales", "machine": machine(), "summary": summary, "configs": len(rows)}
    )


if __name__ == "__main__":
    main()
