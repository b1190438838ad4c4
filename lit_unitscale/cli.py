"""Command-line entry: Lightning subcommands (fit/validate/test/predict) and tool subcommands."""

from __future__ import annotations

import importlib
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


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``python -m lit_unitscale <subcommand> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        sys.exit(module.main(argv[1:]))
    raise SystemExit("lit_unitscale: the training CLI is not built yet")
