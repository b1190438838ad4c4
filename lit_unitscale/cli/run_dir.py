"""One run, one directory: every artifact of a run lives under ``trainer.default_root_dir``.

The logger's ``save_dir`` (W&B offline run, CSV metrics, the resolved ``config.yaml``) and every
``ModelCheckpoint``'s ``dirpath`` are set from the run directory after all recipes and
overrides are merged, so they follow ``--trainer.default_root_dir`` however it is given; recipes
do not name these paths. A new ``fit`` refuses a directory that already holds a run, so two runs
never share files and ``--ckpt_path last`` resumes exactly one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_unitscale.errors import RecipeError

# What a run leaves in its directory; any of these means the directory is taken.
RUN_FILES = ("checkpoints", "config.yaml", "scales.jsonl", "wandb", "tokenizer.json")


def _entries(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def _init_args(entry: Any) -> Any:
    return getattr(entry, "init_args", None) if hasattr(entry, "class_path") else None


def point_artifacts_at(trainer_config: Any, root: str) -> None:
    """Set every logger's ``save_dir`` to ``root`` and every checkpoint callback's ``dirpath``
    to ``root/checkpoints`` in a parsed (not yet instantiated) trainer config.

    Args:
        trainer_config: the ``trainer`` namespace of the parsed configuration.
        root: the run directory.
    """
    for logger in _entries(getattr(trainer_config, "logger", None)):
        args = _init_args(logger)
        if args is not None and "save_dir" in args:
            args.save_dir = root
    for callback in _entries(getattr(trainer_config, "callbacks", None)):
        args = _init_args(callback)
        if args is not None and str(callback.class_path).endswith("ModelCheckpoint"):
            args.dirpath = str(Path(root) / "checkpoints")


def refuse_taken(root: str) -> None:
    """Raise when a fresh ``fit`` would write into a directory holding another run's files.

    Args:
        root: the run directory.
    """
    path = Path(root)
    found = [name for name in RUN_FILES if (path / name).exists()]
    if not found:
        return
    raise RecipeError(
        f"{root} already holds a run ({', '.join(found)}): resume it with --ckpt_path last, "
        f"or start a new run with --trainer.default_root_dir {root.rstrip('/')}-2"
    )
