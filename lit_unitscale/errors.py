"""Errors meant for the person running a recipe or a tool: the CLI prints their message alone
(no traceback) and exits non-zero. Every error a user can cause derives from
:class:`LitUnitscaleError`, so the CLI and every tool recognise them by class. Every layer may
raise them; this module imports nothing heavy.

    LitUnitscaleError
    ├── RecipeError            a recipe key, value or combination (ValueError)
    │   ├── TrainerValueError  Trainer/strategy/callback values Lightning refused
    │   ├── ConfigError        a model configuration (models.config)
    │   ├── PrecisionError     strategies.precision; TopologyError strategies.topology
    │   └── PretrainedMismatchError  fine-tuning recipe vs its pretrained encoder
    ├── CheckpointFileError    missing, truncated, corrupt or unsafe checkpoint
    ├── CheckpointMismatchError
    ├── DataError              lit_unitscale.data.errors and its subclasses
    ├── ToolError              a tool's own refusal (slurm, scales, dashboard, generate, ...)
    └── TrainingFault          training stopped on purpose (exit 1)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LitUnitscaleError(Exception):
    """An error whose message is complete for the user: what, where, what was expected."""

    exit_code: int = 2


class RecipeError(LitUnitscaleError, ValueError):
    """A recipe key, value or combination that cannot work."""


class TrainerValueError(RecipeError):
    """A Trainer, strategy or callback value that Lightning (or the class it builds) refused.

    Args:
        message: the refusal, one line.
        key: the recipe key it is about (``trainer.strategy``), or None when unknown.
        value: that key's value.
    """

    def __init__(self, message: str, key: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.key, self.value = key, value


class CheckpointFileError(LitUnitscaleError, ValueError):
    """A checkpoint file that is missing, truncated, corrupt or refused by the safe loader."""


class CheckpointMismatchError(LitUnitscaleError, ValueError):
    """A checkpoint whose model architecture differs from the recipe's."""


class ConfigError(RecipeError):
    """A model configuration that cannot be built; the message names the field."""


class ToolError(LitUnitscaleError):
    """A tool subcommand's refusal; the message is complete.

    Args:
        message: the one-line explanation printed to stderr.
        exit_code: the process exit status (default the class's).
    """

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TrainingFault(LitUnitscaleError, RuntimeError):
    """Training stopped on purpose (non-finite loss or gradients); checkpoints are intact."""

    exit_code = 1


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""`` when none is close.

    Dotted keys are compared within their parent first (``trainer.max_stepz`` against the other
    ``trainer.*`` keys), then by their last component anywhere.

    Args:
        name: what the user wrote.
        choices: the accepted names.
    """
    choices = sorted({str(c) for c in choices} - {name})
    head, _, last = name.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in choices if c.rpartition(".")[0] == head}
    match = difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{siblings[match[0]]}'?)"
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f" (did you mean '{match[0]}'?)" if match else ""
