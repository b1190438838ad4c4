"""Coordinate check: activation RMS per layer against width, umup beside sp.

    python -m lit_unitscale coord-check --config recipes/decoder/ptb-tiny.yaml \\
        --widths 64 128 256 512 --steps 5 --out coord-check.png

Builds the recipe's task and data through the CLI, then for each parametrization and width
trains a copy whose ``d_model`` is that width for a few steps at the recipe's peak LR (no
warmup, so the steps move the weights), recording each layer's activation RMS at every step
with the ScaleMonitor's hooks. Under u-μP the curves are flat in width; under standard
parametrization they drift apart as training moves the weights (the μP coord-check picture).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from lit_unitscale.errors import ToolError
from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser

# results[parametrization][width][step][layer] = activation RMS
Results = dict[str, dict[int, list[dict[str, float]]]]


def build_from_recipe(configs: list[str], overrides: list[str]) -> tuple[Any, Any]:
    """The task and datamodule a recipe describes (nothing is trained).

    Args:
        configs: recipe YAML files, merged in order.
        overrides: extra ``--key value`` arguments for the CLI.
    """
    from lit_unitscale.cli import make_cli

    args = [a for c in configs for a in ("--config", c)] + list(overrides)
    cli = make_cli(args, run=False)
    return cli.model, cli.datamodule


def _activation_rms(task: Any, datamodule: Any, steps: int, seed: int) -> list[dict[str, float]]:
    import lightning as L

    from lit_unitscale.callbacks import ScaleMonitor
    from lit_unitscale.tools.short_run import short_trainer

    monitor = ScaleMonitor(every_n_steps=1, jsonl=False, tensors=("act",), wandb_table=False)

    class Keep(L.Callback):  # runs after the monitor: its values for each step
        rows: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            last = monitor.last["layers"]
            self.rows.append({layer: t["act"]["rms"] for layer, t in last.items()})

    keep = Keep()
    keep.rows = []
    L.seed_everything(seed, verbose=False)
    trainer = short_trainer(steps, callbacks=[monitor, keep])
    trainer.fit(task, datamodule=datamodule)
    return keep.rows


def run_coord_check(
    task: Any,
    datamodule: Any,
    widths: list[int],
    steps: int,
    parametrizations: tuple[str, ...] = ("umup", "sp"),
    seed: int = 0,
) -> Results:
    """Train a copy of ``task`` at every width and parametrization; return activation RMS.

    Args:
        task: a UnitScaledTask built from a recipe (its hyperparameters are reused).
        datamodule: the recipe's datamodule (the same batches for every run).
        widths: ``d_model`` values.
        steps: optimizer steps per run; RMS is recorded at each step's forward pass.
        parametrizations: ``umup`` and/or ``sp``.
        seed: seed of every run's initialisation.
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    results: Results = {}
    for p in parametrizations:
        results[p] = {}
        for width in widths:
            config = dataclasses.replace(task.config, d_model=width, parametrization=p)
            # Constant LR from step 0: a warmup would leave the first steps at LR ~ 0.
            copy = task.untrained_copy(model=config, warmup_steps=0, schedule="constant")
            results[p][width] = _activation_rms(copy, datamodule, steps, seed)
    return results


def max_width_ratio(per_width: dict[int, list[dict[str, float]]]) -> dict[str, float]:
    """For each layer, the largest ratio (max / min over widths) of activation RMS over steps.

    Args:
        per_width: one parametrization's results.
    """
    runs = list(per_width.values())
    steps = min(len(r) for r in runs)
    ratios: dict[str, float] = {}
    for layer in runs[0][0]:
        worst = 1.0
        for s in range(steps):
            values = [r[s][layer] for r in runs]
            worst = max(worst, max(values) / min(values)) if min(values) > 0 else math.inf
        ratios[layer] = worst
    return ratios


def plot(results: Results, out: Path) -> None:
    """Activation RMS against width per layer: one column per parametrization, one row per
    recorded step (at most four, spread over the run).

    Args:
        results: from :func:`run_coord_check`.
        out: PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(results)
    n_steps = min(len(r) for p in params for r in results[p].values())
    rows = (
        sorted({round(i * (n_steps - 1) / 3) for i in range(4)})
        if n_steps > 4
        else list(range(n_steps))
    )
    fig, axes = plt.subplots(
        len(rows),
        len(params),
        figsize=(5 * len(params), 3 * len(rows)),
        squeeze=False,
        sharey="row",
    )
    for col, p in enumerate(params):
        widths = sorted(results[p])
        layers = list(results[p][widths[0]][0])
        for row, step in enumerate(rows):
            ax = axes[row][col]
            for i, layer in enumerate(layers):
                ys = [results[p][w][step][layer] for w in widths]
                ax.plot(widths, ys, marker="o", color=f"C{i % 10}", label=layer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_title(f"{p}, step {step}")
            ax.set_xlabel("width (d_model)")
            ax.set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> ArgumentParser:
    """The ``coord-check`` tool's parser; the help is :func:`run_coord_check`'s."""
    docs = documented(run_coord_check)
    parser = tool_parser("coord-check", "Activation RMS per layer against width, umup beside sp.")
    parser.add_argument(
        "--config", action="append", required=True, help="recipe YAML (repeat to merge)"
    )
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[64, 128, 256, 512], help=docs["widths"]
    )
    parser.add_argument("--steps", type=int, default=5, help=docs["steps"])
    parser.add_argument(
        "--parametrizations",
        type=Literal["umup", "sp"],
        nargs="+",
        default=["umup", "sp"],
        help=docs["parametrizations"],
    )
    parser.add_argument("--seed", type=int, default=0, help=docs["seed"])
    parser.add_argument("--out", type=Path, default=Path("coord-check.png"), help="plot (PNG)")
    parser.add_argument(
        "--json", type=Path | None, default=None, help="also write the numbers here"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale coord-check``; extra ``--key value`` arguments
    after ``--`` go to the recipe (e.g. ``-- --data.init_args.batch_size 8``).

    Args:
        argv: arguments after the subcommand name.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    args = parse_arguments(build_parser(), argv, ToolError, "coord-check")
    task, datamodule = build_from_recipe(args.config, overrides)
    results = run_coord_check(
        task, datamodule, args.widths, args.steps, tuple(args.parametrizations), args.seed
    )
    plot(results, args.out)
    print(f"wrote {args.out}")
    for p, per_width in results.items():
        worst = max_width_ratio(per_width)
        print(
            f"{p}: largest activation-RMS ratio across widths per layer: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in worst.items())
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
