"""What Lightning costs per training step: the recipe's Trainer (its callbacks, loggers and
clipping, as `fit` runs it) against a bare Trainer and a plain PyTorch loop, with the same
model, batches and optimizer, in one process.

The three alternate, ``--reps`` times each; every run trains a fresh copy for ``--warmup`` +
``--steps`` steps and the median time per timed step is reported, with the ratio to the plain
loop. The recipe's data is used as is (cached corpora; nothing is downloaded when present).

    python benchmarks/lightning_overhead.py --quick      # fixture recipe, one JSON line
    python benchmarks/lightning_overhead.py --recipe recipes/decoder/ptb-small.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import StepTimer, emit, machine

ROOT = Path(__file__).resolve().parents[1]


def _cli(recipe: str, steps: int, root: str):
    from lit_unitscale.cli import make_cli

    args = ["--config", recipe, f"--trainer.max_steps={steps}"]
    args += [f"--trainer.default_root_dir={root}", "--trainer.val_check_interval=null"]
    args += ["--trainer.limit_val_batches=0", "--trainer.check_val_every_n_epoch=null"]
    return make_cli(args, run=False)


def recipe_trainer(recipe: str, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        cli = _cli(recipe, warmup + steps, root)
        timer = StepTimer(warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.elapsed / timer.steps


def bare_trainer(recipe: str, steps: int, warmup: int) -> float:
    from lit_unitscale.tools.short_run import short_trainer

    with tempfile.TemporaryDirectory() as root:
        cli = _cli(recipe, warmup + steps, root)
        timer = StepTimer(warmup)
        clip = cli.trainer.gradient_clip_val
        trainer = short_trainer(warmup + steps, [timer], root=root, gradient_clip_val=clip)
        trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.elapsed / timer.steps


def plain_loop(recipe: str, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        cli = _cli(recipe, warmup + steps, root)
        task, data = cli.model, cli.datamodule
        torch.set_flush_denormal(True)  # as the task does in setup
        data.prepare_data()
        data.setup("fit")
        if not task.config.vocab_size:  # what fill_config_from_data does under a Trainer
            task.config = dataclasses.replace(task.config, vocab_size=data.vocab_size)
        task.configure_model()
        optimizer = task.configure_optimizers()["optimizer"]
        clip = cli.trainer.gradient_clip_val
        batches = iter(data.train_dataloader())
        t0 = None
        for step in range(warmup + steps):
            if step == warmup:
                t0 = time.perf_counter()
            batch = next(batches)
            loss = task.model.loss(task.model(batch["input_ids"]), batch["labels"])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(task.model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/decoder/ptb-tiny.yaml", help="decoder recipe")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--reps", type=int, default=3, help="runs of each variant")
    parser.add_argument("--quick", action="store_true", help="fixture recipe, 1 rep")
    args = parser.parse_args()
    if args.quick:
        args.recipe, args.steps, args.reps = "tests/fixtures/recipes/decoder-tiny.yaml", 5, 1
    os.chdir(ROOT)
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    variants = {"plain": plain_loop, "bare_trainer": bare_trainer, "recipe_trainer": recipe_trainer}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, fn in variants.items():  # interleaved: load drift hits all alike
            times[name].append(fn(args.recipe, args.steps, args.warmup))
    base = statistics.median(times["plain"])
    emit(
        {
            "benchmark": "lightning_overhead",
            "recipe": args.recipe,
            "steps": args.steps,
            "reps": args.reps,
            "machine": machine(),
            "results": {
                k: {
                    "step_ms": round(1e3 * statistics.median(v), 1),
                    "vs_plain": round(statistics.median(v) / base, 3),
                    "all_ms": [round(1e3 * t, 1) for t in v],
                }
                for k, v in times.items()
            },
        }
    )


if __name__ == "__main__":
    main()
