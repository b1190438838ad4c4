"""ScaleMonitor overhead on a recipe's model and batch shape (default ptb-small; random tokens
with PTB's 10k vocabulary, so nothing is downloaded).

Baseline and monitored runs alternate in one process, several repetitions each; the median
time per optimizer step over the timed steps is reported, plus the overhead relative to the
baseline. Results go to docs/scales.md by hand. ``--quick`` instead times one run that
monitors every other step (neighbouring steps share the machine's load) and prints one JSON
line whose ``monitor_step_cost`` is a monitored step's extra time in plain training steps.

    python -m benchmarks.scale_monitor_overhead [--recipe R] [--steps 10] [--reps 3] \\
        [--every 1 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import StepTimer
from lit_unitscale.callbacks import ScaleMonitor
from lit_unitscale.models import TransformerConfig
from lit_unitscale.tasks.causal_lm import CausalLM

RECIPE = Path(__file__).resolve().parents[1] / "recipes/decoder/ptb-small.yaml"
PTB_VOCAB = 10_000


class Batches(L.LightningDataModule):
    def __init__(self, n: int, seq_len: int, batch_size: int) -> None:
        super().__init__()
        tokens = torch.randint(0, PTB_VOCAB, (n, seq_len + 1), generator=torch.Generator())
        self.ds = TensorDataset(tokens[:, :-1], tokens[:, 1:])
        self.batch_size = batch_size

    def train_dataloader(self):
        collate = lambda rows: {  # noqa: E731
            "input_ids": torch.stack([r[0] for r in rows]),
            "labels": torch.stack([r[1] for r in rows]),
        }
        return DataLoader(self.ds, batch_size=self.batch_size, shuffle=True, collate_fn=collate)


class EachStep(L.Callback):
    """Wall time of every optimizer step (listed after the ScaleMonitor, so a monitored step's
    time includes the monitor's end-of-step work)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times[trainer.global_step - 1] = time.perf_counter() - self._t0


def alternating(
    recipe: dict, steps: int, warmup: int, root: Path, max_elements: int | None
) -> tuple[float, float]:
    """Median times of monitored and plain steps of one run monitoring every other step:
    neighbouring steps share the machine's load, so their ratio survives a busy machine."""
    timer = EachStep()
    monitor = ScaleMonitor(every_n_steps=2, max_elements=max_elements)
    _fit(recipe, warmup + steps, [monitor, timer], root)
    timed = {k: v for k, v in timer.times.items() if k >= warmup}
    monitored = statistics.median(v for k, v in timed.items() if k % 2 == 0)
    plain = statistics.median(v for k, v in timed.items() if k % 2 == 1)
    return monitored, plain


def run(recipe: dict, steps: int, warmup: int, every: int | None, root: Path) -> float:
    timer = StepTimer(warmup)
    callbacks: list[L.Callback] = [timer]
    if every is not None:
        callbacks.append(ScaleMonitor(every_n_steps=every))
    _fit(recipe, warmup + steps, callbacks, root)
    return timer.elapsed / timer.steps


def _fit(recipe: dict, max_steps: int, callbacks: list[L.Callback], root: Path) -> None:
    init = recipe["model"]["init_args"]
    data = recipe["data"]["init_args"]
    config = TransformerConfig(vocab_size=PTB_VOCAB, **init["model"])
    task = CausalLM(model=config, lr=init["lr"], warmup_steps=0, schedule="constant")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=recipe["trainer"].get("precision", "32-true"),
        max_steps=max_steps,
        gradient_clip_val=recipe["trainer"].get("gradient_clip_val"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(root),
    )
    n = max_steps * data["batch_size"]
    trainer.fit(task, datamodule=Batches(n, data["seq_len"], data["batch_size"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="decoder recipe YAML")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every setting")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 1000], help="intervals")
    parser.add_argument("--root", default="/tmp/scale_monitor_bench", help="scratch run dir")
    parser.add_argument(
        "--quick", action="store_true", help="one run, every other step monitored; one JSON line"
    )
    parser.add_argument(
        "--max-elements",
        type=int,
        default=1 << 18,
        help="with --quick: the monitor's sampling threshold (0: every element, exact)",
    )
    args = parser.parse_args()
    if args.quick:
        # One run, monitoring every other step: the cost is a monitored step's extra time
        # over its plain neighbours', in training steps.
        torch.manual_seed(0)
        recipe = yaml.safe_load(args.recipe.read_text())
        limit = args.max_elements or None
        monitored, plain = alternating(recipe, 8, 2, Path(args.root) / "quick", limit)
        result = {
            "recipe": args.recipe.name,
            "plain_step_s": round(plain, 4),
            "monitored_step_s": round(monitored, 4),
            "monitor_step_cost": round(monitored / plain - 1, 4),
            "max_elements": limit,
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(result))
        return
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    recipe = yaml.safe_load(args.recipe.read_text())
    settings: list[int | None] = [None, *args.every]
    times: dict[int | None, list[float]] = {s: [] for s in settings}
    for rep in range(args.reps):
        for s in settings:  # interleaved, so drift in machine load hits every setting alike
            root = Path(args.root) / f"{s}-{rep}"
            times[s].append(run(recipe, args.steps, args.warmup, s, root))
    base = statistics.median(times[None])
    print(
        f"{args.recipe.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps x {args.reps} reps (after {args.warmup} untimed)"
    )
    print("| monitor | step time (median) | overhead | all reps (ms) |")
    print("|---|---|---|---|")
    for s in settings:
        med = statistics.median(times[s])
        label = "none (baseline)" if s is None else f"every {s} steps"
        reps = ", ".join(f"{t * 1e3:.1f}" for t in times[s])
        print(f"| {label} | {med * 1e3:.1f} ms | {100 * (med / base - 1):+.1f} % | {reps} |")
    # A monitor step costs (every-1 time - baseline); intervals longer than the timed window
    # only pay the inactive hooks, so the cost at interval k is the sum of the two, amortised.
    if 1 in times:
        extra = statistics.median(times[1]) - base
        idle = [s for s in settings if s is not None and s > args.steps + args.warmup]
        idle_cost = statistics.median(times[idle[0]]) - base if idle else 0.0
        print(
            f"\nmonitor step: +{extra * 1e3:.1f} ms = {extra / base:.3f} training steps; "
            f"inactive hooks: {idle_cost * 1e3:+.1f} ms/step"
        )
        print("| interval | projected overhead |")
        print("|---|---|")
        for k in (10, 25, 50, 100, 200):
            print(f"| {k} | {100 * (extra / k + max(idle_cost, 0.0)) / base:.2f} % |")


if __name__ == "__main__":
    main()
