"""Command-line entry: Lightning subcommands (fit/validate/test/predict) and tool subcommands.

python -m lit_unitscale fit --config recipes/decoder/ptb-tiny.yaml [--config overlay.yaml]
python -m lit_unitscale <tool> ...      # slurm, scales, coord-check, sweep, export, dashboard
"""

from __future__ import annotations

import importlib
import os
import sys

# Tool subcommands: name -> (module with `main(argv) -> int`, one-line help).
TOOLS: dict[str, tuple[str, str]] = {
    "slurm": ("lit_unitscale.tools.slurm", "render or submit an sbatch job from a recipe"),
    "scales": ("lit_unitscale.tools.scales", "offline scale dashboard from a run's scales.jsonl"),
    "coord-check": ("lit_unitscale.tools.coord_check", "activation RMS vs width, umup beside sp"),
    "sweep": ("lit_unitscale.tools.sweep", "learning-rate x width grid and scaling-law fit"),
    "export": ("lit_unitscale.tools.export", "checkpoint -> model.safetensors + config.json"),
    "dashboard": ("lit_unitscale.tools.dashboard", "push the W&B scale workspace"),
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _tools_epilog() -> str:
    lines = ["tool subcommands (python -m lit_unitscale <tool> --help):"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in TOOLS.items()]
    return "\n".join(lines)


def _configure_jsonargparse() -> None:
    import jsonargparse

    # Field docstrings of TransformerConfig become --help text.
    jsonargparse.set_parsing_settings(
        docstring_parse_attribute_docstrings=True,
        # omegaconf+ resolves ${...} after merging all configs and CLI overrides; absolute keys
        # (${model.init_args...}) must be made relative under subcommands.
        omegaconf_absolute_to_relative_paths=True,
    )


def make_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``).
        run: run the subcommand; with False only parse and instantiate (for tests).
    """
    from lightning.pytorch.cli import LightningCLI

    from lit_unitscale.data.base import BaseDataModule
    from lit_unitscale.tasks.base import UnitScaledTask

    _configure_jsonargparse()
    return LightningCLI(
        UnitScaledTask,
        BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        # Resuming into an existing run directory must not abort on config.yaml.
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``python -m lit_unitscale <subcommand> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        sys.exit(module.main(argv[1:]))
    os.environ.setdefault("WANDB_MODE", "offline")
    if not argv or argv[0] in ("-h", "--help"):
        try:
            make_cli(argv or ["--help"])
        finally:
            print("\n" + _tools_epilog())
    make_cli(argv)
