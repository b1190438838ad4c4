"""Low precision with no loss scaling: fp32 vs fp16 (no scaler) vs FP8 simulation vs real FP8
matmuls, umup beside sp.

Each run is the real CLI with a shipped precision overlay on the same recipe, seed and data; the
per-step losses come back through a CSV logger. The claim under test: u-μP's final validation
loss in fp16-noscale and FP8-sim stays within 1 % of its fp32 run, while standard
parametrization loses more (or diverges).

    python benchmarks/low_precision.py --quick     # ~1-2 minutes, one JSON line
    python benchmarks/low_precision.py --out docs/results   # documented numbers + plot
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {
    "fp32": [],
    "fp16-noscale": ["--config", "recipes/precision/fp16-noscale.yaml"],
    "fp8-sim": ["--config", "recipes/precision/fp8-sim.yaml"],
    "fp8": ["--config", "recipes/precision/fp8.yaml"],
}


def run(
    recipe: str,
    precision: str,
    parametrization: str,
    steps: int,
    lr: float | None,
    out: Path,
    extra: list[str],
) -> dict:
    run_dir = out / f"{parametrization}-{precision}"
    args = [
        sys.executable,
        "-m",
        "lit_unitscale",
        "fit",
        "--config",
        recipe,
        *PRECISIONS[precision],
        "--model.init_args.model.parametrization",
        parametrization,
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "csv",
        *extra,
    ]
    if lr is not None:
        args += ["--model.init_args.lr", str(lr)]
    if precision != "fp32":
        args += ["--trainer.precision", "null"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"}
    )
    seconds = time.perf_counter() - t0
    metrics = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    train, val = [], float("nan")
    if metrics:
        for row in csv.DictReader(metrics[-1].open()):
            if row.get("train/loss"):
                train.append((int(row["step"]), float(row["train/loss"])))
            if row.get("val/loss"):
                val = float(row["val/loss"])
    return {
        "precision": precision,
        "parametrization": parametrization,
        "val_loss": val,
        "fp8_range": fp8_range(run_dir),
        "train_curve": train,
        "seconds": round(seconds, 1),
        "returncode": proc.returncode,
        "error": proc.stderr[-600:] if proc.returncode else "",
    }


def fp8_range(run_dir: Path) -> dict:
    """Per tensor kind, the mean over layers of the share of elements that would underflow or
    overflow E4M3/E5M2, at the first and the last ScaleMonitor step of the run."""
    files = sorted(run_dir.glob("**/scales.jsonl"))
    if not files:
        return {}
    records = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    out = {}
    for record in (records[0], records[-1]):
        kinds: dict[str, dict[str, list[float]]] = {}
        for tensors in record["layers"].values():
            for tensor, values in tensors.items():
                for stat, value in values.items():
                    # Histograms (dicts) sit beside the shares; only the shares are summed.
                    if stat != "rms" and isinstance(value, int | float) and math.isfinite(value):
                        kinds.setdefault(tensor, {}).setdefault(stat, []).append(value)
        out[f"step {record['step']}"] = {
            tensor: {stat: round(100 * sum(v) / len(v), 3) for stat, v in stats.items()}
            for tensor, stats in kinds.items()
        }
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted({r["parametrization"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(
        1, len(params), figsize=(6 * len(params), 4), sharey=True, squeeze=False
    )
    for ax, p in zip(axes[0], params, strict=True):
        for r in rows:
            if r["parametrization"] == p and r["train_curve"]:
                s, loss = zip(*r["train_curve"], strict=True)
                ax.plot(s, loss, label=f"{r['precision']} (val {r['val_loss']:.3f})")
        ax.set_title(f"{p}: train loss, no loss scaling")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("train loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="recipes/decoder/ptb-tiny.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="30 steps on the fixture corpus")
    parser.add_argument("--parametrizations", nargs="+", default=["umup", "sp"])
    parser.add_argument(
        "--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS)
    )
    parser.add_argument("--sp-lr", type=float, default=3e-3, help="peak LR for sp runs")
    parser.add_argument("--out", type=Path, default=Path("runs/low_precision"))
    args = parser.parse_args()
    extra: list[str] = []
    if args.quick:
        args.recipe, args.steps = "tests/fixtures/recipes/decoder-tiny.yaml", 30
    args.out.mkdir(parents=True, exist_ok=True)
    # Runs already in OUT (same recipe and steps) are kept, so precisions can be added later.
    saved = args.out / "low_precision.json"
    done = json.loads(saved.read_text()) if saved.exists() else []
    done = [r for r in done if r.get("steps") == args.steps and r.get("recipe") == args.recipe]
    rows = []
    for p in args.parametrizations:
        for precision in args.precisions:
            old = [r for r in done if (r["parametrization"], r["precision"]) == (p, precision)]
            if old and old[0]["returncode"] == 0:
                rows.append(old[0])
                continue
            lr = args.sp_lr if p == "sp" else None
            row = run(args.recipe, precision, p, args.steps, lr, args.out, extra)
            rows.append({**row, "steps": args.steps, "recipe": args.recipe})
    keys = {(r["parametrization"], r["precision"]) for r in rows}
    rows += [r for r in done if (r["parametrization"], r["precision"]) not in keys]
    summary = {}
    for p in args.parametrizations:
        base = next(
            (r["val_loss"] for r in rows if r["parametrization"] == p and r["precision"] == "fp32"),
            float("nan"),
        )
        summary[p] = {
            r["precision"]: {
                "val_loss": round(r["val_loss"], 4),
                "gap_vs_fp32_pct": round(100 * (r["val_loss"] / base - 1), 2)
                if math.isfinite(r["val_loss"])
                else None,
                "seconds": r["seconds"],
                "ok": r["returncode"] == 0,
            }
            for r in rows
            if r["parametrization"] == p
        }
    saved.write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "low_precision.png")
    print(
        json.dumps(
            {
                "benchmark": "low_precision",
                "recipe": args.recipe,
                "steps": args.steps,
                "summary": summary,
            }
        )
    )
    for r in rows:
        if r["error"]:
            print(f"{r['parametrization']} {r['precision']} failed:\n{r['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
