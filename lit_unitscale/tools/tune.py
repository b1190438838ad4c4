"""The u-μP tuning procedure as a command: tune on a cheap proxy, write an overlay for the target.

    python -m lit_unitscale tune --config recipes/decoder/ptb-small.yaml --workers 2
    python -m lit_unitscale fit --config recipes/decoder/ptb-small.yaml \\
        --config runs/tune/tuned.yaml

u-μP's hyperparameters transfer across width, so they are searched on a proxy of the target
recipe — narrower (``--proxy-width``, default a quarter of ``d_model``) and shorter
(``--proxy-steps``, default a quarter of ``max_steps``, warmup scaled alike) — in the order
u-μP prescribes (Blake et al. 2025, section 4.4): the learning rate first, on a log grid of 2×
steps around the recipe's; then, at the best LR, each multiplier (``residual_mult``,
``residual_attn_ratio``, ``attn_mult``, ``ffn_act_mult``, ``loss_mult``) and the weight decay
independently, each on a 2× grid around its default with the others at theirs; then the
optima together, confirmed by one more trial. The better of the combination and the best
single change is kept and written as an overlay YAML for the target recipe, each value
commented with where it came from, beside a report (``report.md``: tables; ``report.png``:
loss against each hyperparameter).

Every trial is one line of ``results.jsonl`` (tools/search.py), so an interrupted search
resumes where it stopped; trials run in this process, on ``--workers`` local processes, or as
a SLURM job array (``--executor slurm``).
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from lit_unitscale.errors import LitUnitscaleError
from lit_unitscale.tools.arguments import parse_arguments, tool_parser
from lit_unitscale.tools.search import (
    Objective,
    RecipeObjective,
    Settings,
    SlurmArray,
    recipe_clip,
    run_trials,
)

MULTIPLIERS = ("residual_mult", "residual_attn_ratio", "attn_mult", "ffn_act_mult", "loss_mult")
"""The u-μP multipliers of ``TransformerConfig``."""
HYPERPARAMETERS = (*MULTIPLIERS, "weight_decay")
"""What the independent search covers, each around its default at the best LR."""
MAX_INDEPENDENT_DECAY = 0.01  # the task refuses u-μP independent decay at or above this


class TuneError(LitUnitscaleError):
    """A tune command that cannot run as given (the message names the option)."""


# -- the procedure, on any objective -----------------------------------------------------------
def log_grid(center: float, span: int, factor: float = 2.0) -> list[float]:
    """``center · factor**k`` for k in -span..span.

    Args:
        center: the middle value (> 0).
        span: grid points on each side.
        factor: ratio between neighbours.
    """
    return [center * factor**k for k in range(-span, span + 1)]


def decay_grid(default: float, steps: int, span: int) -> list[float]:
    """Weight decays to try: a 2× grid around a non-zero default; around 0, zero and the decays
    that shrink weights by a total of 1/4 .. 2 (in units of e-folds at the peak LR) over
    ``steps`` steps — u-μP's decay is per step, so its scale is the horizon's inverse — kept
    below the u-μP limit of 0.01 per step.

    Args:
        default: the recipe's weight decay.
        steps: the proxy's steps.
        span: grid points on each side of a non-zero default.
    """
    values = (
        log_grid(default, span) if default > 0 else [0.0] + log_grid(0.5 / steps, 1) + [2.0 / steps]
    )
    return [v for v in values if v < MAX_INDEPENDENT_DECAY]


@dataclass
class Search:
    """What one search runs: the proxy's fixed settings, the starting defaults, the grids."""

    base: Settings
    """Settings of every trial (``width``, ``steps``, ``warmup_steps``, ...)."""
    defaults: dict[str, float]
    """Each searched hyperparameter's starting value (the recipe's)."""
    lrs: list[float]
    """The learning-rate grid."""
    grids: dict[str, list[float]]
    """Each hyperparameter's grid, searched at the best LR."""
    trials: dict[str, list[Settings]] = field(default_factory=dict)
    """Filled by :func:`run_search`: the trials of each stage."""


def _best(rows: list[dict]) -> dict | None:
    finite = [r for r in rows if math.isfinite(r.get("val_loss", math.nan))]
    return min(finite, key=lambda r: r["val_loss"]) if finite else None


def run_search(
    search: Search, objective: Objective, results: Path, **executor: Any
) -> dict[str, Any]:
    """Run the procedure; returns the rows of each stage and the chosen settings.

    Args:
        search: the proxy, defaults and grids.
        objective: the trial function (settings -> row with ``val_loss``).
        results: the JSONL every trial is recorded in (resumes a search).
        executor: ``run_trials`` options (workers, threads_per_worker, executor, slurm).
    """
    start = {**search.base, **search.defaults}
    lr_trials = [{**start, "lr": lr} for lr in search.lrs]
    lr_rows = run_trials(lr_trials, objective, results, **executor)
    best_lr = _best(lr_rows)
    if best_lr is None:
        raise TuneError(f"every learning rate of {search.lrs} diverged: try a lower --lrs grid")
    at_lr = {**start, "lr": best_lr["lr"]}
    single = {
        name: [{**at_lr, name: value} for value in grid] for name, grid in search.grids.items()
    }
    flat = [t for trials in single.values() for t in trials]
    rows = run_trials(flat, objective, results, **executor)
    per_name, i = {}, 0
    for name, trials in single.items():
        per_name[name] = rows[i : i + len(trials)]
        i += len(trials)
    optima = {}
    for name, mine in per_name.items():
        best = _best(mine)
        default = next((r for r in mine if r[name] == search.defaults[name]), None)
        # The default stays unless another value is strictly better.
        if best is None or (default is not None and default["val_loss"] <= best["val_loss"]):
            optima[name] = search.defaults[name]
        else:
            optima[name] = best[name]
    combined_settings = {**at_lr, **optima}
    (combined,) = run_trials([combined_settings], objective, results, **executor)
    best_single = _best(rows) or best_lr
    if not math.isfinite(combined["val_loss"]) or combined["val_loss"] > best_single["val_loss"]:
        chosen, how = best_single, "single"
    else:
        chosen, how = combined, "combined"
    search.trials = {"lr": lr_trials, **single, "combined": [combined_settings]}
    return {
        "lr": lr_rows,
        "best_lr": best_lr,
        "single": per_name,
        "optima": optima,
        "combined": combined,
        "best_single": best_single,
        "chosen": chosen,
        "chosen_from": how,
    }


# -- the recipe's proxy ----------------------------------------------------------------------
def proxy_search(
    configs: list[str],
    task: Any,
    proxy_width: int | None,
    proxy_steps: int | None,
    lrs: list[float] | None,
    lr_span: int,
    span: int,
    hyperparameters: list[str],
    weight_decays: list[float] | None,
) -> tuple[Search, int]:
    """The search for a recipe: its proxy, its hyperparameters' defaults and their grids; and
    the target's steps.

    Args:
        configs: the recipe files.
        task: the recipe's task.
        proxy_width: proxy ``d_model`` (default: a quarter of the recipe's, at least one head).
        proxy_steps: proxy steps (default: a quarter of ``trainer.max_steps``, at least 10).
        lrs: learning rates (default: the recipe's × 2^k, k in -lr_span..lr_span).
        lr_span: LR grid points on each side of the recipe's.
        span: multiplier grid points on each side of the default.
        hyperparameters: which of :data:`HYPERPARAMETERS` to search.
        weight_decays: the decay grid (default: :func:`decay_grid`).
    """
    from lit_unitscale.tools.slurm import resolved_recipe

    unknown = [h for h in hyperparameters if h not in HYPERPARAMETERS]
    if unknown:
        raise TuneError(f"--hyperparameters {unknown[0]}: not one of {', '.join(HYPERPARAMETERS)}")
    config, hp = task.config, task.hparams
    if config.parametrization != "umup":
        raise TuneError(
            f"tune searches u-μP hyperparameters; the recipe's parametrization is "
            f"{config.parametrization} (use sweep for SP learning rates)"
        )
    target_steps = resolved_recipe(list(configs)).get("trainer", {}).get("max_steps") or 0
    if target_steps <= 0 and proxy_steps is None:
        raise TuneError("the recipe sets no trainer.max_steps: give --proxy_steps")
    steps = proxy_steps or max(10, target_steps // 4)
    width = proxy_width or max(
        config.d_head, (config.d_model // 4) // config.d_head * config.d_head
    )
    warmup = int(hp.warmup_steps)
    if target_steps:
        warmup = round(warmup * steps / target_steps)
    base = {"width": width, "steps": steps, "warmup_steps": warmup}
    defaults = {name: float(getattr(config, name)) for name in MULTIPLIERS}
    defaults["weight_decay"] = float(hp.weight_decay)
    grids = {}
    for name in hyperparameters:
        if name == "weight_decay":
            grids[name] = weight_decays or decay_grid(defaults[name], steps, span)
        else:
            grids[name] = log_grid(defaults[name], span)
    search = Search(base, defaults, lrs or log_grid(float(hp.lr), lr_span), grids)
    return search, int(target_steps or steps)


# -- what the search leaves: overlay and report ------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _range(values: list[float]) -> str:
    return f"{_fmt(min(values))}..{_fmt(max(values))}"


def overlay_text(
    search: Search,
    result: dict[str, Any],
    configs: list[str],
    target_steps: int,
    command: str,
) -> str:
    """The tuned overlay YAML for the target recipe, each value commented with its source.

    Args:
        search: the search that ran.
        result: :func:`run_search`'s result.
        configs: the target recipe files.
        target_steps: the target's steps (the weight decay is rescaled to them).
        command: the tune command line, quoted in the header.
    """
    chosen, base = result["chosen"], search.base
    lr_row = result["best_lr"]
    lines = [
        "# u-μP hyperparameters tuned for " + " + ".join(configs) + " by",
        f"#   {command}",
        f"# on a proxy of width {base['width']} and {base['steps']} steps "
        f"(warmup {base.get('warmup_steps', 'as the recipe')}); every trial is in "
        "results.jsonl, the tables in report.md.",
        "# Use: python -m lit_unitscale fit "
        + " ".join(f"--config {c}" for c in configs)
        + " --config <this file>",
    ]
    if result["chosen_from"] == "single":
        lines.append(
            f"# The combined optima (val loss {result['combined']['val_loss']:.4f}) lost to the "
            f"best single change (val loss {chosen['val_loss']:.4f}): that one is kept."
        )
    else:
        lines.append(
            f"# The combined optima were confirmed: val loss {chosen['val_loss']:.4f} against "
            f"{result['best_single']['val_loss']:.4f} for the best single change and "
            f"{lr_row['val_loss']:.4f} at the best LR with every default."
        )
    lr = chosen["lr"]
    model_lines, task_lines = [], []
    task_lines.append(
        f"    lr: {_fmt(lr)}  # best of the LR sweep {_range(search.lrs)} at the proxy "
        f"(val loss {lr_row['val_loss']:.4f}); u-μP's LR transfers across width"
    )
    for name in HYPERPARAMETERS:
        if name not in search.grids:
            continue  # the recipe's value stands
        value = float(chosen.get(name, search.defaults[name]))
        best = _best(result["single"][name])
        if best is None:
            where = "every value diverged: default kept"
        else:
            where = (
                f"independent search {_range(search.grids[name])} at lr {_fmt(lr_row['lr'])}: "
                f"best {_fmt(best[name])} (val loss {best['val_loss']:.4f})"
            )
            if best[name] != value:
                where += ", not kept: the combination lost"
        if name == "weight_decay":
            # Per-step decay: the same total shrinkage over the target's horizon.
            scaled = value * base["steps"] / target_steps
            task_lines.append(
                f"    weight_decay: {_fmt(scaled)}  # {_fmt(value)} per step over "
                f"{base['steps']} proxy steps x {base['steps']}/{target_steps} (same total "
                f"decay); {where}"
            )
        else:
            model_lines.append(f"      {name}: {_fmt(value)}  # {where}")
    lines += ["model:", "  init_args:", *task_lines]
    if model_lines:  # an empty `model:` would replace the recipe's model config with null
        lines += ["    model:", *model_lines]
    return "\n".join(lines) + "\n"


def report_text(search: Search, result: dict[str, Any]) -> str:
    """The markdown report: one table per stage, the best value of each in bold.

    Args:
        search: the search that ran.
        result: :func:`run_search`'s result.
    """

    def table(name: str, rows: list[dict]) -> list[str]:
        best = _best(rows)
        out = [f"| {name} | val loss | seconds |", "|---|---|---|"]
        for r in sorted(rows, key=lambda r: r[name]):
            loss = f"{r['val_loss']:.4f}" if math.isfinite(r["val_loss"]) else "diverged"
            mark = "**" if r is best else ""
            out.append(f"| {_fmt(r[name])} | {mark}{loss}{mark} | {r.get('seconds', '')} |")
        return out + [""]

    base = search.base
    lines = [
        "# u-μP tuning report",
        "",
        f"Proxy: width {base['width']}, {base['steps']} steps, "
        f"warmup {base.get('warmup_steps', 'as the recipe')}. "
        f"Defaults: " + ", ".join(f"{k} {_fmt(v)}" for k, v in search.defaults.items()) + ".",
        "",
        "## 1. Learning rate (every other hyperparameter at its default)",
        "",
        *table("lr", result["lr"]),
        f"## 2. Each hyperparameter alone at lr {_fmt(result['best_lr']['lr'])}",
        "",
    ]
    for name, rows in result["single"].items():
        lines += [f"### {name}", "", *table(name, rows)]
    c, s = result["combined"], result["best_single"]
    lines += [
        "## 3. Combined",
        "",
        "| trial | settings | val loss |",
        "|---|---|---|",
        "| combined optima | "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in result["optima"].items())
        + f" | {c['val_loss']:.4f} |",
        "| best single change | "
        + ", ".join(f"{k} {_fmt(s[k])}" for k in search.grids if s.get(k) != search.defaults[k])
        + f" | {s['val_loss']:.4f} |",
        "",
        f"Kept: the {result['chosen_from']} one (val loss {result['chosen']['val_loss']:.4f}).",
        "",
        "![loss against each hyperparameter](report.png)",
        "",
    ]
    return "\n".join(lines)


def plot_report(search: Search, result: dict[str, Any], path: Path) -> Path:
    """Validation loss against each hyperparameter (log2 axes; a zero decay sits at the left).

    Args:
        search: the search that ran.
        result: :func:`run_search`'s result.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("lr", result["lr"])] + list(result["single"].items())
    cols = min(4, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, panels, strict=False):
        pts = sorted((r[name], r["val_loss"]) for r in rows if math.isfinite(r["val_loss"]))
        if name == "weight_decay":
            ax.set_xscale("symlog", linthresh=min([v for v, _ in pts if v > 0] or [1e-4]))
        else:
            ax.set_xscale("log", base=2)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o")
        chosen = result["chosen"].get(name)
        if chosen is not None:
            ax.axvline(chosen, color="k", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("val loss")
    fig.suptitle(
        f"u-μP tuning on a width-{search.base['width']} proxy, {search.base['steps']} steps "
        "(dashed: kept)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command ---------------------------------------------------------------------------------
def tune(
    config: list[str],
    out: Path = Path("runs/tune"),
    proxy_width: int | None = None,
    proxy_steps: int | None = None,
    lrs: list[float] | None = None,
    lr_span: int = 3,
    span: int = 2,
    hyperparameters: list[str] | None = None,
    weight_decays: list[float] | None = None,
    val_batches: int | None = None,
    seed: int = 0,
    workers: int = 1,
    threads_per_worker: int | None = None,
    executor: Literal["local", "slurm"] = "local",
    partition: str | None = None,
    account: str | None = None,
    time: str = "01:00:00",
    cpus_per_task: int = 1,
    max_parallel: int | None = None,
    objective: Objective | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Tune a u-μP recipe on a proxy; write ``tuned.yaml``, ``report.md`` and ``report.png``.

    Args:
        config: the target recipe's YAML files, merged in order.
        out: directory of results.jsonl, the overlay and the report (rerun to resume).
        proxy_width: the proxy's d_model (default: a quarter of the recipe's).
        proxy_steps: the proxy's steps (default: a quarter of trainer.max_steps, at least 10).
        lrs: learning rates to sweep (default: the recipe's x 2^k, k in -lr_span..lr_span).
        lr_span: LR grid points on each side of the recipe's LR.
        span: grid points on each side of each multiplier's default (2x steps).
        hyperparameters: which to search after the LR (default: the five u-μP multipliers and
            weight_decay).
        weight_decays: the weight-decay grid (default: 0 and 1/4 to 2 total e-folds).
        val_batches: validation batches per trial (default: the recipe's limit_val_batches, or 20).
        seed: seed of every trial.
        workers: local processes running trials at once.
        threads_per_worker: torch threads of each local worker (default: torch's).
        executor: local (this machine) or slurm (one job-array task per trial).
        partition: SLURM partition (executor slurm).
        account: SLURM account (executor slurm).
        time: SLURM time limit of each trial (executor slurm).
        cpus_per_task: SLURM cores of each trial (executor slurm).
        max_parallel: SLURM trials running at once (executor slurm; default: no limit).
        objective: the trial function (default: training the recipe); for tests.
        command: the command line quoted in the overlay (default: rebuilt from config, out).
    """
    from lit_unitscale.tools.search import build_from_recipe
    from lit_unitscale.tools.slurm import resolved_recipe

    trainer = resolved_recipe(list(config)).get("trainer", {})  # a missing file, in one line
    task, datamodule = build_from_recipe(config)
    search, target_steps = proxy_search(
        config,
        task,
        proxy_width,
        proxy_steps,
        lrs,
        lr_span,
        span,
        list(hyperparameters or HYPERPARAMETERS),
        weight_decays,
    )
    out.mkdir(parents=True, exist_ok=True)
    if objective is None:
        objective = RecipeObjective.of(
            task,
            datamodule,
            configs=[str(Path(c).resolve()) for c in config],
            val_batches=val_batches or trainer.get("limit_val_batches") or 20,
            seed=seed,
            gradient_clip_val=recipe_clip(config),
            scratch=str((out / "scratch").resolve()),
        )
    slurm = SlurmArray(partition, account, time, cpus_per_task, max_parallel)
    result = run_search(
        search,
        objective,
        out / "results.jsonl",
        workers=workers,
        threads_per_worker=threads_per_worker,
        executor=executor,
        slurm=slurm,
    )
    if command is None:
        command = "python -m lit_unitscale tune " + shlex.join(_argv_of(config, out))
    (out / "tuned.yaml").write_text(overlay_text(search, result, config, target_steps, command))
    (out / "report.md").write_text(report_text(search, result))
    plot_report(search, result, out / "report.png")
    return result


def _argv_of(config: list[str], out: Path) -> list[str]:
    return [a for c in config for a in ("--config", c)] + ["--out", str(out)]


def build_parser() -> ArgumentParser:
    """The ``tune`` command's parser: ``--config`` repeatable, the rest from :func:`tune`."""
    parser = tool_parser(
        "tune",
        "u-μP tuning on a proxy: LR sweep, then each multiplier and the weight "
        "decay around its default, combined and confirmed; writes a tuned overlay and a report. "
        "Lists are written [a, b].",
    )
    parser.add_argument(
        "--config", action="append", required=True, help="target recipe YAML (repeatable)"
    )
    parser.add_function_arguments(tune, skip={"config", "objective", "command"})
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m lit_unitscale tune ...``.

    Args:
        argv: the arguments after ``tune``.
    """
    args = parse_arguments(build_parser(), argv, TuneError, "tune")
    kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    kwargs["out"] = Path(kwargs["out"])
    argv = list(sys.argv[1:] if argv is None else argv)
    result = tune(**kwargs, command="python -m lit_unitscale tune " + shlex.join(argv))
    out = kwargs["out"]
    print(
        f"kept the {result['chosen_from']} settings (val loss "
        f"{result['chosen']['val_loss']:.4f}); overlay: {out / 'tuned.yaml'}, "
        f"report: {out / 'report.md'}"
    )
    return 0
