"""The command line: LightningCLI for fit/validate/test/predict, the tool subcommands, recipe
checks before anything is built, and the one-line explanation of a user's mistake.

- ``main.py``: the entry point (``python -m lit_unitscale``), the tools table, ``make_cli``.
- ``recipe_check.py``: keys and values checked against the recipe files before parsing.
- ``explain.py``: an exception → one line naming the file, key and what was expected.
- ``run_dir.py``: every artifact of a run under ``trainer.default_root_dir``.
- ``console.py``: the terminal's progress and log output.
"""

from lit_unitscale.cli.main import LIGHTNING_SUBCOMMANDS, TOOLS, main, make_cli

__all__ = ["LIGHTNING_SUBCOMMANDS", "TOOLS", "main", "make_cli"]
