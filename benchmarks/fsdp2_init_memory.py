"""Peak host memory per rank while FSDP2 builds and shards a model, against its fp32 size.

Two gloo processes each build the same decoder and shard it with ``fully_shard`` per block, as
``configure_model`` does: once the plain way (the whole fp32 model built on every rank, then
sharded) and once on the meta device (:class:`lit_unitscale.strategies.meta_init.MetaInit`: only
the rank's shards are allocated, one full parameter at a time while its init is replayed). Each
build runs in fresh processes; the peak is the resident set's high-water mark (``ru_maxrss``)
minus the resident set just before the build.

    python -m benchmarks.fsdp2_init_memory --quick     # ~30 s, one JSON line
    python -m benchmarks.fsdp2_init_memory             # the documented numbers (d 1024)

The meta build's peak is this rank's shards plus one full parameter (its init replayed) and the
scratch its random draw was first made in, so the ratio approaches one half as the largest
parameter becomes a small part of the model (an 8B Llama's largest, the embedding, is ~6 %).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(mode: str, d_model: int, layers: int, vocab: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_unitscale.models import DecoderLM, TransformerConfig
    from lit_unitscale.strategies.fsdp2 import shard_model
    from lit_unitscale.strategies.meta_init import MetaInit

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    config = TransformerConfig(
        vocab_size=vocab, d_model=d_model, n_layers=layers, n_heads=8, max_seq_len=128
    )
    torch.manual_seed(0)
    before = _rss_bytes()
    if mode == "meta":
        with MetaInit() as init:
            model = DecoderLM(config)
        init.name_parameters(model)
        shard_model(model, mesh)
        init.materialise(model, "cpu")
    else:
        model = DecoderLM(config)
        shard_model(model, mesh)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    dist.barrier()
    print(
        json.dumps(
            {
                "rank": dist.get_rank(),
                "peak_bytes": peak - before,
                "fp32_bytes": 4 * params,
                "local_fraction": local / params,
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()


def _run(mode: str, args: argparse.Namespace) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, "-m", "benchmarks.fsdp2_init_memory", "--child", mode]
        command += [f"--d-model={args.d_model}", f"--layers={args.layers}", f"--vocab={args.vocab}"]
        procs.append(
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        )
    records = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} build failed on a rank (exit {proc.returncode})")
        records.append(json.loads(out.strip().splitlines()[-1]))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller model (d 512)")
    parser.add_argument("--d-model", type=int, default=1024, help="model width")
    parser.add_argument("--layers", type=int, default=16, help="Transformer blocks")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size")
    parser.add_argument("--child", choices=("meta", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.layers, args.vocab = 512, 8, 4096
    if args.child:
        _child(args.child, args.d_model, args.layers, args.vocab)
        return
    result = {"d_model": args.d_model, "layers": args.layers, "vocab": args.vocab, "ranks": 2}
    for mode in ("plain", "meta"):
        records = _run(mode, args)
        fp32 = records[0]["fp32_bytes"]
        result["fp32_mib"] = round(fp32 / 2**20, 1)
        result[f"{mode}_peak_mib_per_rank"] = [round(r["peak_bytes"] / 2**20, 1) for r in records]
        result[f"{mode}_peak_over_fp32"] = round(max(r["peak_bytes"] for r in records) / fp32, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
