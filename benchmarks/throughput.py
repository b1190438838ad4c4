"""Training-step throughput of the decoder, u-μP against SP, over widths and lengths.

At each (width, sequence length) point, forward + backward + AdamW step on the same batch of
``--tokens`` tokens, four ways: u-μP and SP, eager and compiled (``model.compile()``, as the
task's ``compile: true`` does). Beside them, the same step's GEMMs alone, timed back to back
(every linear's forward, grad-input and grad-weight matmul; attention's six batched matmuls at
the causal kernel's half of the key blocks): the time this CPU cannot go below. All candidates
at a point alternate in one process, so machine noise hits all alike; median of ``--repeats``,
spread = (max - min) / median. Peak memory of one step: a fresh process per parametrization
and point, its VmHWM after one eager step.

    python -m benchmarks.throughput --quick          # < 2 minutes, one JSON line
    OMP_NUM_THREADS=1 python -m benchmarks.throughput --out docs/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import emit, interleaved_medians, machine
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import param_groups


def config_of(parametrization: str, d: int, layers: int, vocab: int, seq: int):
    """The benchmarked decoder: head width 64, GELU MLP ×4, RoPE (the ptb recipes' model)."""
    return TransformerConfig(
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=max(1, d // 64),
        max_seq_len=seq,
        parametrization=parametrization,
    )


def ours(
    parametrization: str,
    d: int,
    layers: int,
    heads: int | None = None,
    vocab: int = 10000,
    seq: int = 128,
    compile_: bool = False,
):
    """One training step of our decoder as a function of the batch."""
    torch.manual_seed(0)
    model = DecoderLM(config_of(parametrization, d, layers, vocab, seq))
    opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=parametrization))
    if compile_:
        model.compile()
    return lambda ids: _step(lambda: model.loss(model(ids), ids), opt)


def reference(d: int, layers: int, vocab: int, seq: int):
    import unit_scaling as uu

    torch.manual_seed(0)
    heads = max(1, d // 64)
    model = uu.TransformerDecoder(hidden_size=d, vocab_size=vocab, layers=layers, heads=heads)
    opt = uu.optim.AdamW(model.parameters(), lr=1e-3)
    return lambda ids: _step(lambda: model.loss(ids), opt)


def hf_gpt2(d: int, layers: int, vocab: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=seq,
        n_embd=d,
        n_layer=layers,
        n_head=max(1, d // 64),
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


def gemms_only(d: int, layers: int, vocab: int, batch: int, seq: int):
    """The step's GEMMs alone, on preallocated operands of the step's shapes."""
    g = torch.Generator().manual_seed(0)
    n, hidden, heads = batch * seq, 4 * d, max(1, d // 64)
    # (fan_in, fan_out) of every linear: q, kv, o, up, down per layer, then the readout.
    linears = [(d, d), (d, 2 * d), (d, d), (d, hidden), (hidden, d)] * layers + [(d, vocab)]
    ops = []
    for fan_in, fan_out in sorted(set(linears)):
        x, w = torch.randn(n, fan_in, generator=g), torch.randn(fan_out, fan_in, generator=g)
        grad = torch.randn(n, fan_out, generator=g)
        count = linears.count((fan_in, fan_out))
        ops.append((count, lambda x=x, w=w, grad=grad: (x @ w.T, grad @ w, grad.T @ x)))
    # Causal flash attention visits about half the key blocks: time s x s/2 products.
    bh, dh, half = batch * heads, d // heads, max(1, seq // 2)
    q, k = torch.randn(bh, seq, dh, generator=g), torch.randn(bh, half, dh, generator=g)
    p, do = torch.randn(bh, seq, half, generator=g), torch.randn(bh, seq, dh, generator=g)

    def attention():
        s = torch.bmm(q, k.transpose(1, 2))  # logits
        o = torch.bmm(p, k)  # P V
        dp = torch.bmm(do, k.transpose(1, 2))  # dP = dO V^T
        dv = torch.bmm(p.transpose(1, 2), do)  # dV = P^T dO
        dq = torch.bmm(p, k)  # dQ = dS K
        dk = torch.bmm(p.transpose(1, 2), q)  # dK = dS^T Q
        return s, o, dp, dv, dq, dk

    ops.append((layers, attention))

    def run():
        for count, fn in ops:
            for _ in range(count):
                fn()

    return run


def vm_hwm_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory(parametrization: str, d: int, layers: int, vocab: int, batch: int, seq: int):
    """VmHWM of a fresh process that builds the model and runs one eager step, MiB."""
    args = [sys.executable, "-m", "benchmarks.throughput", "--peak-of", parametrization]
    args += ["--widths", str(d), "--seqs", str(seq), "--layers", str(layers)]
    args += ["--vocab", str(vocab), "--tokens", str(batch * seq)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["vm_hwm_mib"]


def point(args, d: int, seq: int) -> dict:
    """Every candidate at one width and length, interleaved."""
    batch = max(1, args.tokens // seq)
    shape = dict(d=d, layers=args.layers, vocab=args.vocab, seq=seq)
    ids = torch.randint(0, args.vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    # Each point compiles new models of the same code: past dynamo's recompile limit (8) a
    # later point's "compiled" candidates would silently run eager. Start every point afresh.
    torch._dynamo.reset()
    steps = {}
    for mode in args.modes.split(","):
        for p in ("umup", "sp"):
            steps[f"{p}_{mode}"] = ours(p, **shape, compile_=mode == "compiled")
    if "reference" in args.baselines:
        steps["unit_scaling"] = reference(**shape)
    if "hf" in args.baselines:
        steps["hf_gpt2"] = hf_gpt2(**shape)
    candidates = {k: (lambda f=f: f(ids)) for k, f in steps.items()}
    candidates["gemms_only"] = gemms_only(d, args.layers, args.vocab, batch, seq)
    timings = interleaved_medians(candidates, args.repeats)
    tokens = batch * seq
    row: dict = {"d_model": d, "seq": seq, "batch": batch}
    for name, t in timings.items():
        row[name] = {
            "tokens_per_s": round(tokens / t["median_s"], 1),
            "median_s": round(t["median_s"], 4),
            "min_s": round(t["min_s"], 4),
            "spread_pct": round(100 * (t["max_s"] - t["min_s"]) / t["median_s"], 1),
        }
    for mode in args.modes.split(","):
        u, s = timings[f"umup_{mode}"]["median_s"], timings[f"sp_{mode}"]["median_s"]
        row[f"umup_vs_sp_{mode}"] = round(s / u, 3)
        row[f"umup_{mode}_vs_gemms"] = round(u / timings["gemms_only"]["median_s"], 3)
        # Load from other processes only ever adds time: the fastest runs are the least
        # disturbed, so their ratio is given beside the medians'.
        fastest = timings[f"sp_{mode}"]["min_s"] / timings[f"umup_{mode}"]["min_s"]
        row[f"umup_vs_sp_{mode}_fastest"] = round(fastest, 3)
    if args.memory:
        mem = {p: peak_memory(p, d, args.layers, args.vocab, batch, seq) for p in ("umup", "sp")}
        row["peak_mib"] = {p: round(v, 1) for p, v in mem.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small point, 7 repeats")
    parser.add_argument("--widths", default="256,512,1024", help="comma list of d_model")
    parser.add_argument("--seqs", default="128,512", help="comma list of sequence lengths")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument("--vocab", type=int, default=10000, help="vocabulary size")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch x seq)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per candidate")
    parser.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    parser.add_argument("--baselines", default="", help="also time: reference, hf")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip VmHWM")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # the fresh memory process
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as lit_unitscale's training does (see tasks/base.py)
    if args.peak_of:
        d, seq = int(args.widths), int(args.seqs)
        batch = max(1, args.tokens // seq)
        ids = torch.randint(0, args.vocab, (batch, seq))
        ours(args.peak_of, d, args.layers, vocab=args.vocab, seq=seq)(ids)
        print(json.dumps({"vm_hwm_mib": vm_hwm_mib()}))
        return
    if args.quick:
        args.widths, args.seqs, args.layers, args.tokens = "128", "64", 2, 512
    result = {
        "benchmark": "throughput",
        "layers": args.layers,
        "vocab": args.vocab,
        "tokens_per_step": args.tokens,
        "repeats": args.repeats,
        "machine": machine(),
        "rows": [],
    }
    for d in args.widths.split(","):
        for s in args.seqs.split(","):
            result["rows"].append(point(args, int(d), int(s)))
            if args.out:  # written after every point, so a long run keeps what it measured
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
