"""Command-line entry: Lightning subcommands (fit/validate/test/predict) and tool subcommands."""

from __future__ import annotations

import importlib
import sys

# Tool subcommands: name -> (module with `main(argv) -> int`, one-line help).
TOOLS: dict[str, tuple[str, str]] = {}


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``python -m lit_unitscale <subcommand> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        sys.exit(module.main(argv[1:]))
    raise SystemExit("lit_unitscale: the training CLI is not built yet")
