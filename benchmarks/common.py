"""Helpers shared by the benchmark scripts: timing loops and result output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import lightning as L
import torch


def machine() -> dict:
    """A short description of where the numbers were measured."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def interleaved_medians(
    candidates: dict[str, Callable[[], None]], repeats: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Time each candidate ``repeats`` times, alternating between them so machine noise hits all
    alike (the order rotates every round, so none always runs first or after the same one);
    return median, min and max seconds per call for each."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
        }
        for name, ts in times.items()
    }


def emit(result: dict) -> None:
    """Print the result as one JSON line (what --quick modes promise)."""
    print(json.dumps(result, sort_keys=True))


def add_shape_args(
    parser: argparse.ArgumentParser,
    d_model: int = 256,
    layers: int = 4,
    batch: int = 16,
    seq: int = 128,
    vocab: int = 10000,
) -> None:
    """The decoder-shape options every step benchmark takes (head width 64)."""
    parser.add_argument("--d-model", type=int, default=d_model, help="model width")
    parser.add_argument("--layers", type=int, default=layers, help="transformer blocks")
    parser.add_argument("--batch", type=int, default=batch, help="sequences per step")
    parser.add_argument("--seq", type=int, default=seq, help="tokens per sequence")
    parser.add_argument("--vocab", type=int, default=vocab, help="vocabulary size")


def shape_of(args: argparse.Namespace) -> dict[str, int]:
    """The model shape from :func:`add_shape_args`'s options."""
    return dict(
        d=args.d_model,
        layers=args.layers,
        heads=max(1, args.d_model // 64),
        vocab=args.vocab,
        seq=args.seq,
    )


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after the first ``warmup``, for Trainer benchmarks."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.steps, self.elapsed = warmup, None, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None:
            self.steps += 1
            self.elapsed = time.perf_counter() - self.t0
