"""Quality of the encoder, fine-tuning and encoder-decoder recipes, u-μP beside SP.

For each parametrization: masked-LM pretraining (val loss), MR sentiment and WNUT-16 NER
fine-tuned from that run (test accuracy / entity F1), CMUdict G2P (test WER/PER, beam 4). Each
recipe runs as-is through the CLI, only ``model.parametrization`` overridden; a run's directory
``runs/<recipe name>`` is cleared first. Prints a markdown table and appends JSON lines to
``benchmarks/results/quality-<size>.jsonl``.

    python benchmarks/quality.py --size tiny            # ~5 minutes per parametrization
    python benchmarks/quality.py --size small --parametrizations umup
    python benchmarks/quality.py --size small --steps-scale 0.25   # a quarter of every schedule

SP runs use ``--sp-lr`` (one Adam LR for every recipe) unless ``--sp-lr 0`` keeps the recipe's
u-μP base LR, which is not a learning rate SP can use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# (recipe, metric subcommand, metrics to report)
PLAN = [
    ("encoder/mlm", "validate", ["val/loss", "val/acc"]),
    ("finetune/mr-sentiment", "test", ["test/acc", "test/f1"]),
    ("finetune/wnut16-ner", "test", ["test/f1", "test/precision", "test/recall"]),
    ("encoder_decoder/cmudict-g2p", "test", ["test/wer", "test/per"]),
]


def recipe_path(base: str, size: str) -> Path:
    """``<base>-tiny.yaml``; full size is ``encoder/mlm-small.yaml`` and ``<base>.yaml``."""
    if size == "tiny":
        return REPO / "recipes" / f"{base}-tiny.yaml"
    return REPO / "recipes" / (f"{base}-small.yaml" if base.endswith("mlm") else f"{base}.yaml")


def run(
    recipe: Path,
    parametrization: str,
    subcommand: str,
    keys: list[str],
    lr: float | None = None,
    steps_scale: float = 1.0,
) -> dict:
    import yaml

    from lit_unitscale.cli import make_cli

    spec = yaml.safe_load(recipe.read_text())
    root = REPO / spec["trainer"]["default_root_dir"]
    shutil.rmtree(root, ignore_errors=True)
    common = ["--config", str(recipe), "--model.init_args.model.parametrization", parametrization]
    if lr:
        common += ["--model.init_args.lr", str(lr)]
    schedule = []
    if steps_scale != 1.0:
        steps = max(1, round(spec["trainer"]["max_steps"] * steps_scale))
        every = max(1, round(spec["trainer"].get("val_check_interval", steps) * steps_scale))
        schedule = ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(every)]
    start = time.perf_counter()
    fit = make_cli(["fit", *common, *schedule])
    fit_s = time.perf_counter() - start
    params = sum(p.numel() for p in fit.model.model.parameters())
    ckpt = root / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    evaluated = make_cli([subcommand, *common, "--ckpt_path", str(ckpt)])
    eval_s = time.perf_counter() - start
    metrics = evaluated.trainer.callback_metrics
    return {
        "recipe": str(recipe.relative_to(REPO)),
        "parametrization": parametrization,
        "lr": lr or spec["model"]["init_args"]["lr"],
        "params": params,
        "steps": fit.trainer.global_step,
        "fit_s": round(fit_s, 1),
        "eval_s": round(eval_s, 1),
        **{k: round(float(metrics[k]), 4) for k in keys if k in metrics},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--parametrizations", nargs="+", default=["umup", "sp"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sp-lr", type=float, default=2e-3, help="Adam LR of every SP run")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every recipe's max_steps"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.chdir(REPO)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = REPO / "benchmarks" / "results" / f"quality-{args.size}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for parametrization in args.parametrizations:
        for template, subcommand, keys in PLAN:
            lr = args.sp_lr if parametrization == "sp" else None
            recipe = recipe_path(template, args.size)
            row = run(recipe, parametrization, subcommand, keys, lr, args.steps_scale)
            row.update(threads=args.threads, cpu=platform.processor() or platform.machine())
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print("\n| recipe | param. | lr | params | steps | fit s | eval s | metrics |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fixed = {
            "recipe",
            "parametrization",
            "params",
            "lr",
            "steps",
            "fit_s",
            "eval_s",
            "threads",
            "cpu",
        }
        metrics = ", ".join(f"{k} {v}" for k, v in r.items() if k not in fixed)
        print(
            f"| {r['recipe']} | {r['parametrization']} | {r['lr']:g} | {r['params']:,} | "
            f"{r['steps']} | {r['fit_s']} | {r['eval_s']} | {metrics} |"
        )


if __name__ == "__main__":
    main()
