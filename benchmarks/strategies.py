"""Step time and peak memory of each strategy on CPU (2 processes, gloo) against one process.

    python benchmarks/strategies.py [--d-model 512] [--layers 16] [--steps 4] [--out docs/...]

Every run trains the same model on the same global batch (the fixture text, 8 sequences of 64
tokens per optimizer step) for a few steps; the first step is excluded from the timing. Each
configuration is a fresh process group, so peak RSS (``ru_maxrss``) is that run's own. Prints a
Markdown table (and writes it with ``--out``). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "1 process": (1, None),
    "DDP": (2, "ddp"),
    "FSDP2": (2, "fsdp2"),
    "ZeRO-2": (2, "zero2"),
    "ZeRO-3": (2, "zero3"),
}


def _strategy(name: str | None):
    from lit_unitscale.strategies import DDPStrategy, DeepSpeedStrategy, FSDP2Strategy

    if name is None:
        return "auto"
    return {
        "ddp": lambda: DDPStrategy(),
        "fsdp2": lambda: FSDP2Strategy(),
        "zero2": lambda: DeepSpeedStrategy(stage=2),
        "zero3": lambda: DeepSpeedStrategy(stage=3),
    }[name]()


def worker(spec: dict) -> None:
    """One rank of one configuration; writes its timings and memory as JSON."""
    import lightning as L
    import torch

    from lit_unitscale.data.causal_lm import CausalLMData
    from lit_unitscale.models import TransformerConfig
    from lit_unitscale.tasks.causal_lm import CausalLM

    torch.set_num_threads(spec["threads"])
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter() - self.start)

    L.seed_everything(0)
    world = spec["devices"]
    config = TransformerConfig(
        d_model=spec["d_model"], n_layers=spec["layers"], n_heads=8, max_seq_len=64
    )
    task = CausalLM(config, lr=0.01, warmup_steps=1)
    data = CausalLMData(
        corpus=str(ROOT / "tests/fixtures/data/text"), seq_len=64, batch_size=8 // world
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=_strategy(spec["strategy"]),
        max_steps=spec["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(task, datamodule=data)
    params = sum(p.numel() for p in task.parameters()) * (world if spec["strategy"] else 1)
    result = {
        "step_s": statistics.median(times[1:]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "local_params": sum(p.numel() for p in task.parameters()),
        "params_upper": params,
    }
    rank = int(os.environ.get("RANK", 0))
    Path(spec["out"]).with_suffix(f".rank{rank}.json").write_text(json.dumps(result))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    devices, strategy = RUNS[name]
    spec = {
        "devices": devices,
        "strategy": strategy,
        "d_model": args.d_model,
        "layers": args.layers,
        "steps": args.steps,
        # Two cores: one thread per process with two processes, both for one process.
        "threads": max(1, (os.cpu_count() or 2) // devices),
        "out": str(tmp / name.replace(" ", "_")),
    }
    env = {**os.environ, "LIT_UNITSCALE_CACHE": str(tmp / "cache")}
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if devices == 1:
        subprocess.run(command, env=env, check=True, capture_output=True)
    else:
        port = str(_port())
        procs = [
            subprocess.Popen(
                command,
                env={
                    **env,
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port,
                    "WORLD_SIZE": str(devices),
                    "NODE_RANK": "0",
                    "RANK": str(r),
                    "LOCAL_RANK": str(r),
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for r in range(devices)
        ]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"{name} failed")
    return [
        json.loads(Path(spec["out"]).with_suffix(f".rank{r}.json").read_text())
        for r in range(devices)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512, help="model width")
    parser.add_argument("--layers", type=int, default=16, help="Transformer layers")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (first untimed)")
    parser.add_argument("--only", nargs="*", default=list(RUNS), help="configurations to run")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            results[name] = run(name, args, Path(tmp))
            print(name, results[name], flush=True)
    base = results.get("1 process", [{}])[0].get("step_s")
    params = results[next(iter(results))][0]["local_params"]
    lines = [
        f"Model: d_model {args.d_model}, {args.layers} layers, "
        f"{params / 1e6:.0f}M parameters (1 process); global batch 8 × 64 tokens; "
        f"median of steps 2–{args.steps}.",
        "",
        "| run | processes | step time (s) | vs 1 process | peak RSS per rank (GiB) |",
        "|---|---|---|---|---|",
    ]
    for name, ranks in results.items():
        step = max(r["step_s"] for r in ranks)
        ratio = f"{step / base:.2f}×" if base else "–"
        rss = " / ".join(f"{r['peak_rss_gib']:.2f}" for r in ranks)
        lines.append(f"| {name} | {len(ranks)} | {step:.2f} | {ratio} | {rss} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
