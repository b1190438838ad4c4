"""Where a training step's time goes: torch.profiler over the same decoder step in u-μP and SP.

Builds the throughput benchmark's model (``benchmarks/throughput.py``) in both
parametrizations, profiles a few forward + backward + AdamW steps of each, and prints per op
the self CPU time in both and the difference: the ops that make u-μP slower than SP come first.

    python benchmarks/profile_step.py --quick      # small model, one JSON line
    python benchmarks/profile_step.py --out docs/results/profile.md
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import add_shape_args, emit, machine, shape_of
from benchmarks.throughput import ours

# Kernels a compiler cannot make cheaper on CPU (it calls the same GEMM / attention / softmax
# code); everything else (elementwise, copies, optimizer, Python overhead) it can fuse or drop.
LIBRARY_KERNELS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_log_softmax",
    "aten::_log_softmax_backward_data",
)


def op_times(step, steps: int) -> tuple[dict[str, float], dict[str, int]]:
    """Self CPU milliseconds and call counts per op name, per step."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ms: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in prof.key_averages():
        ms[event.key] += event.self_cpu_time_total / 1e3 / steps
        calls[event.key] += event.count // steps
    return dict(ms), dict(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 2 steps")
    add_shape_args(parser)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per model")
    parser.add_argument("--top", type=int, default=15, help="ops listed")
    parser.add_argument("--out", type=Path, help="write the table as markdown here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    if args.quick:
        args.d_model, args.layers, args.batch, args.seq, args.steps = 128, 2, 8, 64, 2
    shape = shape_of(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    results = {}
    for name in ("umup", "sp"):
        step = ours(name, **shape)
        results[name] = op_times(lambda step=step: step(ids), args.steps)
    (umup, umup_calls), (sp, sp_calls) = results["umup"], results["sp"]
    totals = {k: sum(v[0].values()) for k, v in results.items()}
    ops = sorted(set(umup) | set(sp), key=lambda k: umup.get(k, 0) - sp.get(k, 0), reverse=True)
    lines = [
        f"Step of a decoder d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, "
        f"batch {args.batch} x {args.seq}; self CPU ms per step (mean of {args.steps}), "
        f"{torch.get_num_threads()} threads. Total: u-μP {totals['umup']:.1f} ms, "
        f"SP {totals['sp']:.1f} ms.",
        "",
        "| op | u-μP ms | SP ms | difference ms | u-μP calls | SP calls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op in ops[: args.top]:
        a, b = umup.get(op, 0.0), sp.get(op, 0.0)
        lines.append(
            f"| `{op}` | {a:.1f} | {b:.1f} | {a - b:+.1f} | "
            f"{umup_calls.get(op, 0)} | {sp_calls.get(op, 0)} |"
        )
    kernel = umup and sum(umup.get(k, 0.0) for k in LIBRARY_KERNELS) / totals["umup"]
    lines += [
        "",
        f"GEMM, attention and softmax kernels take {100 * kernel:.0f} % of u-μP's step: fusing "
        f"everything else away (what torch.compile can do on CPU) would give at most "
        f"{1 / kernel:.2f}x.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    emit(
        {
            "benchmark": "profile_step",
            "machine": machine(),
            "total_ms": {k: round(v, 1) for k, v in totals.items()},
            "library_kernel_share": round(kernel, 3),
            "top_extra_ops": {op: round(umup.get(op, 0) - sp.get(op, 0), 2) for op in ops[:5]},
        }
    )


if __name__ == "__main__":
    main()
