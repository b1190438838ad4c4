"""Step cost and peak memory of each precision: fp32, bf16-mixed, fp16 with no loss scaler, FP8
simulation and real FP8 matmuls (``recipes/precision/fp8.yaml``), for the u-μP decoder.

Times: the four configurations alternate (forward + backward + AdamW step on the same batch),
median of ``--repeats``; ratios are against fp32. Peak memory: each configuration runs again in
a fresh process of its own, which reports its peak RSS (``VmHWM``), so one configuration's
peak cannot hide another's. Saved for backward: the bytes autograd keeps from one step's
forward (each storage once, parameters and inputs not counted), where FP8 saves its casts.

    python benchmarks/precision_cost.py --quick    # ~1 minute, one JSON line
    python benchmarks/precision_cost.py            # the documented numbers (ptb-tiny's shape)
    python benchmarks/precision_cost.py --d-model 256 --layers 4 --batch 32 --seq 128 \
        --precisions fp32 fp8                      # ptb-small's shape
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import add_shape_args, emit, interleaved_medians, machine, shape_of
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import fp8, param_groups, use_fp8_matmuls

PRECISIONS = ("fp32", "bf16-mixed", "fp16-noscale", "fp8-sim", "fp8")


def context(precision: str) -> contextlib.AbstractContextManager:
    """What the precision plugin wraps forward and backward in (see lit_unitscale.strategies)."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp16-noscale":
        return torch.autocast("cpu", dtype=torch.float16)
    if precision == "fp8-sim":
        return fp8.fp8_matmuls()
    return contextlib.nullcontext()


def _model(precision: str, shape: dict) -> DecoderLM:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=shape["vocab"],
        d_model=shape["d"],
        n_layers=shape["layers"],
        n_heads=shape["heads"],
        max_seq_len=shape["seq"],
    )
    model = DecoderLM(config)
    if precision == "fp8":
        use_fp8_matmuls(model)  # what FP8Precision does when the strategy converts the model
    return model


def saved_for_backward_mib(precision: str, shape: dict, batch: int) -> float:
    """Bytes autograd keeps from one forward, each storage once, parameters and ids excluded."""
    model = _model(precision, shape)
    ids = torch.randint(0, shape["vocab"], (batch, shape["seq"]))
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen.add(ids.untyped_storage().data_ptr())
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context(precision):
        loss = model.loss(model(ids), ids)
    del loss
    return total[0] / 2**20


def make_step(precision: str, shape: dict, batch: int) -> Callable[[], None]:
    """One training step of a fresh u-μP decoder under ``precision``."""
    model = _model(precision, shape)
    opt = torch.optim.AdamW(param_groups(model, 1e-3))
    ids = torch.randint(0, shape["vocab"], (batch, shape["seq"]))

    def step() -> None:
        with context(precision):
            loss = model.loss(model(ids), ids)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peak_rss_mib(precision: str, shape: dict, batch: int, steps: int) -> float:
    """Peak RSS of a fresh process running ``steps`` steps of one configuration."""
    args = [sys.executable, "-m", "benchmarks.precision_cost", "--child", precision]
    args += ["--child-spec", json.dumps({"shape": shape, "batch": batch, "steps": steps})]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def child(precision: str, spec: dict) -> None:
    torch.set_flush_denormal(True)
    step = make_step(precision, spec["shape"], spec["batch"])
    for _ in range(spec["steps"]):
        step()
    print(peak_rss_self_mib())


def peak_rss_self_mib() -> float:
    """This process's peak RSS. ``ru_maxrss`` would not do: Linux carries it across the exec
    that started this process, so it can report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few repeats")
    add_shape_args(parser, d_model=128, layers=2, batch=32, seq=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, json.loads(args.child_spec))
    torch.set_flush_denormal(True)
    if args.quick:
        args.d_model, args.layers, args.batch, args.seq, args.repeats = 64, 2, 8, 32, 3
    shape = shape_of(args)
    steps = {p: make_step(p, shape, args.batch) for p in args.precisions}
    timings = interleaved_medians(steps, args.repeats, warmup=1)
    base = timings.get("fp32", next(iter(timings.values())))["median_s"]
    tokens = args.batch * args.seq
    results = {
        p: {
            "step_s": round(t["median_s"], 4),
            "tokens_per_s": round(tokens / t["median_s"], 1),
            "cost_vs_fp32": round(t["median_s"] / base, 3),
            "spread_pct": round(100 * (t["max_s"] - t["min_s"]) / t["median_s"], 1),
            "peak_rss_mib": round(peak_rss_mib(p, shape, args.batch, 2), 1),
            "saved_for_backward_mib": round(saved_for_backward_mib(p, shape, args.batch), 1),
        }
        for p, t in timings.items()
    }
    emit(
        {
            "benchmark": "precision_cost",
            "shape": shape,
            "batch": args.batch,
            "repeats": args.repeats,
            "machine": machine(),
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
