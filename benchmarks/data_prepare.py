"""Preparing token shards at scale, and streaming them.

1. Writes a synthetic corpus of Zipf-distributed words (a 50k-word vocabulary of made-up words,
   exponent 1.1; line lengths log-normal around 20 words, like running English), then runs
   ``python -m lit_unitscale prepare`` on it in a subprocess and reports MB/s, tokens/s, CPU
   seconds and the peak memory of its whole process tree (PSS summed, sampled every 0.1 s) and
   the largest single process's peak RSS, at two sizes: memory must not grow with the corpus.
2. Streams the training split as a recipe does (CausalLMData, shuffled blocks of 128 tokens,
   batches of 32) and compares the loader's tokens/s with what one training step of the
   ptb-small decoder (recipes/decoder/ptb-small.yaml) consumes per second on this machine.

    python -m benchmarks.data_prepare --quick                  # 20 and 100 MB, one JSON line
    python -m benchmarks.data_prepare --sizes-mb 100 1024      # the table in docs/data.md
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

from benchmarks.common import emit, machine

REPO = Path(__file__).resolve().parents[1]
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def zipf_corpus(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Write about `target_bytes` of Zipf-word text lines to `path`; returns bytes written."""
    rng = np.random.default_rng(seed)
    n_words = 50_000
    lengths = rng.integers(2, 11, n_words)
    words = np.array(
        [bytes(rng.choice(LETTERS, n)) for n in lengths], dtype=object
    )  # made-up words
    ranks = np.arange(1, n_words + 1, dtype=np.float64)
    p = ranks**-1.1
    p /= p.sum()
    written = 0
    with open(path, "wb") as out:
        while written < target_bytes:
            line_lengths = np.maximum(1, rng.lognormal(np.log(20), 0.6, 20_000).astype(int))
            ids = rng.choice(n_words, int(line_lengths.sum()), p=p)
            seps = np.full(len(ids), b" ", dtype=object)
            seps[np.cumsum(line_lengths) - 1] = b"\n"
            pieces = np.empty(2 * len(ids), dtype=object)
            pieces[0::2], pieces[1::2] = words[ids], seps
            block = b"".join(pieces.tolist())
            out.write(block)
            written += len(block)
    return written


def tree_memory(pid: int) -> int:
    """Memory of a process and its descendants: the sum of their PSS (shared pages split among
    the processes sharing them; forked workers share the parent's libraries), which is what
    they take from the machine together. RSS summed would count those pages once per worker."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def prepare_run(corpus: Path, out: Path, tokenizer: str, workers: int) -> dict:
    command = [sys.executable, "-m", "lit_unitscale", "prepare", "--input", str(corpus)]
    command += ["--out", str(out), "--tokenizer", tokenizer, "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_memory(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {proc.returncode}")
    from lit_unitscale.data.shards import read_manifest

    manifest = read_manifest(out)
    tokens = sum(manifest.tokens(s) for s in ("train", "valid", "test"))
    size = corpus.stat().st_size
    return {
        "mb": round(size / 1e6, 1),
        "seconds": round(seconds, 1),
        "mb_per_s": round(size / 1e6 / seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds),
        "cpu_s": round(cpu, 1),
        "mb_per_cpu_s": round(size / 1e6 / cpu, 2),
        "peak_memory_mb": round(peak / 1e6),
        "peak_rss_single_process_mb": round(after.ru_maxrss / 1e3),
        "load_average": round(os.getloadavg()[0], 1),
        "shard_mb": round(sum(f.stat().st_size for f in out.rglob("*.bin")) / 1e6, 1),
    }


def loader_tokens_per_s(prepared: Path, batches: int, num_workers: int) -> float:
    from lit_unitscale.data import CausalLMData

    data = CausalLMData(corpus=str(prepared), seq_len=128, batch_size=32, num_workers=num_workers)
    loader = data.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # worker start-up is not streaming
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(iterator)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def ptb_small_step_tokens_per_s(steps: int) -> float:
    """Tokens per second one ptb-small training step (forward, backward, AdamW) consumes."""
    from lit_unitscale.models import DecoderLM, TransformerConfig

    recipe = yaml.safe_load((REPO / "recipes/decoder/ptb-small.yaml").read_text())
    seq, batch = recipe["data"]["init_args"]["seq_len"], recipe["data"]["init_args"]["batch_size"]
    config = TransformerConfig(**recipe["model"]["init_args"]["model"], vocab_size=10_000)
    model = DecoderLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 10_000, (batch, seq + 1))

    def step() -> None:
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 and 100 MB, one JSON line")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--tokenizer", default="bpe", help="bpe or word")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batches", type=int, default=200, help="loader batches to time")
    parser.add_argument("--steps", type=int, default=3, help="ptb-small steps to time")
    parser.add_argument("--work-dir", default=None, help="where corpora go (default: a tmp dir)")
    args = parser.parse_args(argv)
    sizes = [20, 100] if args.quick else args.sizes_mb
    torch.set_num_threads(os.cpu_count() or 1)
    result: dict = {"benchmark": "data_prepare", "machine": machine(), "prepare": []}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        last = None
        for size in sizes:
            corpus = Path(tmp) / f"zipf-{size}mb.txt"
            t0 = time.perf_counter()
            zipf_corpus(corpus, size << 20)
            print(f"wrote {corpus.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            out = Path(tmp) / f"prepared-{size}mb"
            row = prepare_run(corpus, out, args.tokenizer, args.workers)
            print(row, file=sys.stderr)
            result["prepare"].append(row)
            corpus.unlink()
            last = out
        loader = {w: loader_tokens_per_s(last, args.batches, w) for w in (0, 2)}
        step = ptb_small_step_tokens_per_s(args.steps)
    result["loader_tokens_per_s"] = {f"workers_{w}": round(v) for w, v in loader.items()}
    result["ptb_small_step_tokens_per_s"] = round(step)
    result["loader_to_step_ratio"] = round(loader[0] / step, 1)
    result["tokenizer"] = args.tokenizer
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
