"""Training-step throughput of the u-μP decoder against baselines, in one process.

Each candidate runs forward + backward + AdamW step on the same batch shape; candidates alternate
so that machine noise affects all alike. Ratios are tokens/s relative to ``umup``.

    python benchmarks/throughput.py --quick          # ~1 minute, one JSON line
    python benchmarks/throughput.py                  # the documented numbers
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.common import add_shape_args, emit, interleaved_medians, machine, shape_of
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import param_groups


def ours(
    parametrization: str,
    d: int,
    layers: int,
    heads: int,
    vocab: int,
    seq: int,
    compile_: bool = False,
):
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        max_seq_len=seq,
        parametrization=parametrization,
    )
    model = DecoderLM(config)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=parametrization))
    fwd = torch.compile(model) if compile_ else model
    return lambda ids: _step(lambda: model.loss(fwd(ids), ids), opt)


def reference(d: int, layers: int, heads: int, vocab: int, seq: int):
    import unit_scaling as uu

    torch.manual_seed(0)
    model = uu.TransformerDecoder(hidden_size=d, vocab_size=vocab, layers=layers, heads=heads)
    opt = uu.optim.AdamW(model.parameters(), lr=1e-3)
    return lambda ids: _step(lambda: model.loss(ids), opt)


def hf_gpt2(d: int, layers: int, heads: int, vocab: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=seq,
        n_embd=d,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return lambda ids: _step(lambda: model(input_ids=ids, labels=ids).loss, opt)


def _step(loss_fn, opt):
    loss = loss_fn()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small model, few repeats")
    add_shape_args(parser)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--baselines",
        default="sp,reference,hf,compile",
        help="comma list from: sp, reference, hf, compile",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as lit_unitscale's training does (see tasks/base.py)
    if args.quick:
        args.d_model, args.layers, args.batch, args.seq, args.repeats = 128, 2, 8, 64, 6
    shape = shape_of(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    steps = {"umup": ours("umup", **shape)}
    wanted = set(args.baselines.split(","))
    if "sp" in wanted:
        steps["sp"] = ours("sp", **shape)
    if "reference" in wanted:
        steps["unit_scaling"] = reference(**shape)
    if "hf" in wanted:
        try:
            steps["hf_gpt2"] = hf_gpt2(**shape)
        except ImportError:
            pass
    if "compile" in wanted:
        steps["umup_compiled"] = ours("umup", **shape, compile_=True)
    timings = interleaved_medians({k: (lambda f=f: f(ids)) for k, f in steps.items()}, args.repeats)
    tokens = args.batch * args.seq
    base = timings["umup"]["median_s"]
    rows = {
        name: {
            "tokens_per_s": tokens / t["median_s"],
            "speed_vs_umup": base / t["median_s"],
            "spread_pct": 100 * (t["max_s"] - t["min_s"]) / t["median_s"],
        }
        for name, t in timings.items()
    }
    emit(
        {
            "benchmark": "throughput",
            "shape": shape,
            "batch": args.batch,
            "repeats": args.repeats,
            "machine": machine(),
            "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()},
            "params_M": round(
                sum(
                    p.numel()
                    for p in DecoderLM(
                        TransformerConfig(
                            vocab_size=args.vocab,
                            d_model=args.d_model,
                            n_layers=args.layers,
                            n_heads=shape["heads"],
                        )
                    ).parameters()
                )
                / 1e6,
                2,
            )
            if not math.isnan(base)
            else None,
        }
    )


if __name__ == "__main__":
    main()
