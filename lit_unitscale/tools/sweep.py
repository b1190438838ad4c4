"""Learning-rate × width sweeps and scaling-law fits: the evidence for u-μP's LR transfer.

    python -m lit_unitscale sweep --config recipes/decoder/ptb-tiny.yaml \\
        --widths 64 128 256 --lrs 0.25 0.5 1 2 --sp-lrs 0.001 0.002 0.004 0.008 \\
        --steps 200 --out runs/sweep

For each parametrization, width and LR, the recipe's task is trained for ``--steps`` steps with
``d_model`` set to the width (head width kept, so heads grow with width) and evaluated on the
validation split. u-μP's base LRs and SP's Adam LRs live on different scales, so SP can be
given its own grid (``--sp-lrs``). Results go to ``results.jsonl`` (one line per run, appended,
so a sweep can be resumed), ``table.md`` and ``lr_sweep.png`` (loss vs LR, one curve per width
— the μP transfer picture). ``--fit`` adds a power-law fit of the best loss against parameters
and compute.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ArgumentParser

from lit_unitscale.errors import ToolError
from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser
from lit_unitscale.tools.search import RecipeObjective, load_rows, recipe_clip, run_trials


def run_sweep(
    task: Any,
    datamodule: Any,
    widths: list[int],
    lrs: list[float],
    steps: int,
    parametrizations: list[str],
    out: Path,
    val_batches: int = 20,
    seed: int = 0,
    sp_lrs: list[float] | None = None,
    val_every: int = 0,
    gradient_clip_val: float | None = None,
    configs: list[str] | None = None,
    workers: int = 1,
    threads_per_worker: int | None = None,
) -> list[dict]:
    """Run every (parametrization, width, lr) point not already in ``out/results.jsonl``.

    Args:
        task: the recipe's task; its hyperparameters are reused except width, LR, parametrization.
        datamodule: the recipe's datamodule.
        widths: ``d_model`` values.
        lrs: peak learning rates.
        steps: optimizer steps per run.
        parametrizations: ``umup`` and/or ``sp``.
        out: output directory.
        val_batches: validation batches per evaluation.
        seed: seed of every run.
        sp_lrs: peak learning rates of the ``sp`` runs (default: ``lrs``).
        val_every: record a validation curve, evaluating every this many steps (0: final only).
        gradient_clip_val: the recipe's clipping threshold, read by each run's clipping rule.
        configs: the recipe files ``task`` came from (needed by ``workers`` > 1).
        workers: local processes running points at once.
        threads_per_worker: torch threads of each worker.
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    trials = [
        {"parametrization": p, "width": width, "lr": lr, "steps": steps}
        for p in parametrizations
        for width in widths
        for lr in (sp_lrs if p == "sp" and sp_lrs else lrs)
    ]
    objective = RecipeObjective.of(
        task,
        datamodule,
        configs=configs or [],
        val_batches=val_batches,
        seed=seed,
        val_every=val_every,
        gradient_clip_val=gradient_clip_val,
        scratch=str(out / "scratch"),  # what a run writes (an MLM task's tokenizer copy)
    )
    path = out / "results.jsonl"
    run_trials(trials, objective, path, workers, threads_per_worker, fields=SWEEP_FIELDS)
    return load_rows(path)


SWEEP_FIELDS = ("parametrization", "width", "lr", "steps")
"""The settings that identify a sweep point (results.jsonl rows of older sweeps resume)."""


def load_results(path: Path) -> list[dict]:
    """Rows of a results.jsonl (empty when the file does not exist)."""
    return load_rows(path)


def best_lrs(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """For each (parametrization, width), the row with the lowest finite validation loss."""
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        if not math.isfinite(r["val_loss"]):
            continue
        k = (r["parametrization"], r["width"])
        if k not in best or r["val_loss"] < best[k]["val_loss"]:
            best[k] = r
    return best


def transfer_shift(rows: list[dict], parametrization: str) -> float:
    """How many LR grid steps the best LR moves between the narrowest and widest width."""
    grid = sorted({r["lr"] for r in rows if r["parametrization"] == parametrization})
    best = best_lrs([r for r in rows if r["parametrization"] == parametrization])
    widths = sorted(w for (_, w) in best)
    if len(widths) < 2:
        return 0.0
    lo, hi = best[(parametrization, widths[0])]["lr"], best[(parametrization, widths[-1])]["lr"]
    return float(grid.index(hi) - grid.index(lo))


def fit_power_law(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares fit of ``y = a * x**(-alpha)`` in log space.

    Args:
        x: sizes (parameters or FLOPs), > 0.
        y: losses, > 0.
    """
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    slope, intercept = np.polyfit(lx, ly, 1)
    pred = slope * lx + intercept
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum()) or 1.0
    return {"alpha": float(-slope), "a": float(math.exp(intercept)), "r2": 1 - ss_res / ss_tot}


def scaling_fit(rows: list[dict], parametrization: str, tokens_per_step: int) -> dict[str, Any]:
    """Power laws of the best final loss per width against parameters and compute (6·N·D), and,
    when the runs recorded validation curves, of the compute-efficient frontier: the lowest
    loss reached by any width for a given compute, over every point of every curve."""
    best = sorted(
        (r for (p, _), r in best_lrs(rows).items() if p == parametrization),
        key=lambda r: r["params"],
    )
    if len(best) < 2:
        return {}
    n = [r["non_embedding_params"] or r["params"] for r in best]
    flops = [compute(r, r["steps"], tokens_per_step) for r in best]
    loss = [r["val_loss"] for r in best]
    fit = {
        "points": [
            {"width": r["width"], "params": r["params"], "lr": r["lr"], "val_loss": r["val_loss"]}
            for r in best
        ],
        "vs_params": fit_power_law(n, loss),
        "vs_compute": fit_power_law(flops, loss),
    }
    frontier = compute_frontier(best, tokens_per_step)
    if len(frontier) >= 2:
        fit["frontier"] = frontier
        fit["frontier_vs_compute"] = fit_power_law(
            [p["flops"] for p in frontier], [p["val_loss"] for p in frontier]
        )
    return fit


def compute(row: dict, steps: int, tokens_per_step: int) -> float:
    """Training FLOPs of a run after ``steps`` steps: 6 · parameters · tokens."""
    return 6 * row["params"] * steps * tokens_per_step


def compute_frontier(rows: list[dict], tokens_per_step: int) -> list[dict]:
    """Points of the runs' validation curves that no cheaper point beats: for each, the width
    that reached the lowest loss so far at that compute (``6 · params · tokens``).

    Args:
        rows: runs with a ``curve`` of ``[step, val_loss]`` points.
        tokens_per_step: tokens in one optimizer step.
    """
    points = sorted(
        (compute(r, step, tokens_per_step), loss, r["width"], step)
        for r in rows
        for step, loss in r.get("curve", [])
        if step > 0 and math.isfinite(loss)
    )
    frontier, lowest = [], math.inf
    for flops, loss, width, step in points:
        if loss < lowest:
            lowest = loss
            frontier.append({"flops": flops, "val_loss": loss, "width": width, "step": step})
    return frontier


def plot_scaling(rows: list[dict], fit: dict[str, Any], tokens_per_step: int, out: Path) -> Path:
    """Validation loss against compute, one curve per width, with the frontier's power law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (ScalarFormatter below)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("viridis")
    widths = sorted({r["width"] for r in rows if r.get("curve")})
    for i, w in enumerate(widths):
        r = next(r for r in rows if r["width"] == w and r.get("curve"))
        xs = [compute(r, s, tokens_per_step) for s, _ in r["curve"] if s > 0]
        ys = [v for s, v in r["curve"] if s > 0]
        color = cmap(i / max(1, len(widths) - 1))
        ax.plot(xs, ys, marker=".", color=color, label=f"width {w} ({r['params'] / 1e6:.1f}M)")
    law = fit.get("frontier_vs_compute")
    if law:
        xs = np.geomspace(fit["frontier"][0]["flops"], fit["frontier"][-1]["flops"], 50)
        ax.plot(
            xs,
            law["a"] * xs ** -law["alpha"],
            "k--",
            label=f"frontier: {law['a']:.2f}·C^-{law['alpha']:.3f} (R² {law['r2']:.2f})",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("training compute C = 6·params·tokens (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"scaling-{rows[0]['parametrization']}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table(rows: list[dict], out: Path) -> str:
    """Markdown tables, one per parametrization: a row per width, a column per LR of its grid."""
    best = best_lrs(rows)
    lines: list[str] = []
    for p in sorted({r["parametrization"] for r in rows}):
        mine = [r for r in rows if r["parametrization"] == p]
        lrs = sorted({r["lr"] for r in mine})
        lines += [
            "| parametrization | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
            "|---|---|" + "---|" * len(lrs),
        ]
        for w in sorted({r["width"] for r in mine}):
            cells = []
            for lr in lrs:
                r = next((r for r in mine if (r["width"], r["lr"]) == (w, lr)), None)
                if r is None:
                    cells.append("")
                    continue
                mark = "**" if best.get((p, w)) is r else ""
                cells.append(
                    f"{mark}{r['val_loss']:.3f}{mark}"
                    if math.isfinite(r["val_loss"])
                    else "diverged"
                )
            lines.append(f"| {p} | {w} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "table.md").write_text(text)
    return text


def plot(rows: list[dict], out: Path) -> Path:
    """Loss vs LR, one curve per width, one panel per parametrization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted({r["parametrization"] for r in rows})
    fig, axes = plt.subplots(
        1, len(params), figsize=(5.5 * len(params), 4), squeeze=False, sharey=True
    )
    for ax, p in zip(axes[0], params, strict=True):
        widths = sorted({r["width"] for r in rows if r["parametrization"] == p})
        cmap = plt.get_cmap("viridis")
        for i, w in enumerate(widths):
            pts = sorted(
                (r["lr"], r["val_loss"])
                for r in rows
                if r["parametrization"] == p and r["width"] == w and math.isfinite(r["val_loss"])
            )
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    color=cmap(i / max(1, len(widths) - 1)),
                    label=f"width {w}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak learning rate")
        ax.set_title(p)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("validation loss")
    fig.tight_layout()
    path = out / "lr_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser() -> ArgumentParser:
    """The ``sweep`` tool's parser; the help is :func:`run_sweep`'s."""
    docs = documented(run_sweep)
    parser = tool_parser(
        "sweep",
        "Learning-rate x width grid, LR-transfer plot and scaling-law fit. Arguments after "
        "`--` override the recipe (e.g. -- --data.init_args.batch_size 8).",
    )
    parser.add_argument(
        "--config", action="append", required=True, help="recipe YAML (repeatable, merged in order)"
    )
    parser.add_argument("--widths", type=int, nargs="+", required=True, help=docs["widths"])
    parser.add_argument("--lrs", type=float, nargs="+", required=True, help=docs["lrs"])
    parser.add_argument("--sp-lrs", type=float, nargs="+", default=None, help=docs["sp_lrs"])
    parser.add_argument("--steps", type=int, default=200, help=docs["steps"])
    parser.add_argument(
        "--parametrizations",
        type=Literal["umup", "sp"],
        nargs="+",
        default=["umup", "sp"],
        help=docs["parametrizations"],
    )
    parser.add_argument("--val-batches", type=int, default=20, help=docs["val_batches"])
    parser.add_argument("--seed", type=int, default=0, help=docs["seed"])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help=docs["out"])
    parser.add_argument("--fit", action="store_true", help="fit loss vs parameters and compute")
    parser.add_argument("--val-every", type=int, default=0, help=docs["val_every"])
    parser.add_argument("--workers", type=int, default=1, help=docs["workers"])
    parser.add_argument(
        "--threads-per-worker", type=int | None, default=None, help=docs["threads_per_worker"]
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale sweep``; arguments after ``--`` go to the recipe.

    Args:
        argv: arguments after the subcommand name.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    args = parse_arguments(build_parser(), argv, ToolError, "sweep")
    from lit_unitscale.tools.search import build_from_recipe

    task, datamodule = build_from_recipe(args.config, overrides)
    rows = run_sweep(
        task,
        datamodule,
        args.widths,
        args.lrs,
        args.steps,
        args.parametrizations,
        args.out,
        args.val_batches,
        args.seed,
        args.sp_lrs,
        args.val_every,
        recipe_clip(args.config),
        args.config,
        args.workers,
        args.threads_per_worker,
    )
    rows = [r for r in rows if r["steps"] == args.steps]
    print(write_table(rows, args.out))
    print(f"plot: {plot(rows, args.out)}")
    summary = {
        p: {"best_lr_shift_grid_steps": transfer_shift(rows, p)} for p in args.parametrizations
    }
    if args.fit:
        batch = next(iter(datamodule.train_dataloader()))
        tokens = int(batch["input_ids"].numel())
        for p in args.parametrizations:
            summary[p]["scaling"] = fit = scaling_fit(rows, p, tokens)
            if fit.get("frontier"):
                mine = [r for r in rows if r["parametrization"] == p]
                print(f"scaling plot: {plot_scaling(mine, fit, tokens, args.out)}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0
