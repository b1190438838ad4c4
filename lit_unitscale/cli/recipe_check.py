"""Checks on the command line and recipe files made before the parser sees them, so that the
commonest mistakes name the file, line and key instead of the parser's internals."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lit_unitscale.errors import (
    CheckpointFileError,
    CheckpointMismatchError,
    RecipeError,
    did_you_mean,
)

# ckpt_path values Lightning resolves itself rather than reading a file.
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def option_values(argv: Sequence[str], *names: str) -> list[str]:
    """Values of an option given as ``--name value`` or ``--name=value``, in order.

    Args:
        argv: command-line arguments.
        names: option spellings (``--config``, ``-c``).
    """
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def check_subcommand(argv: Sequence[str], known: Iterable[str]) -> None:
    """Refuse an unknown first word with the close matches.

    Args:
        argv: command-line arguments.
        known: accepted subcommands (Lightning's and the tools).
    """
    if not argv or argv[0].startswith("-"):
        return
    known = list(known)
    if argv[0] not in known:
        raise RecipeError(
            f"unknown subcommand '{argv[0]}'{did_you_mean(argv[0], known)}; "
            f"choose from {', '.join(known)}"
        )


class _RecipeLoader(yaml.SafeLoader):
    """The safe loader reading ``1e-3`` as a number, as YAML 1.2, OmegaConf and the CLI do
    (PyYAML's YAML 1.1 rules read it as a string)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _safe_load(text: str) -> Any:
    # yaml.safe_load with the loader above: a SafeLoader, so Python object tags are refused.
    loader = _RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """Parse one recipe file with the safe YAML loader (no Python object tags).

    Args:
        path: the recipe file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        hint = did_you_mean(path.name, [p.name for p in path.parent.glob("*.y*ml")])
        raise RecipeError(f"recipe {path}: file not found{hint}") from None
    except (OSError, ValueError) as error:  # a folder, no permission, not UTF-8, a NUL in the name
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise RecipeError(f"recipe {path}: cannot read it ({reason})") from None
    try:
        data = _safe_load(text)
    except yaml.constructor.ConstructorError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else "?"
        tag = (error.problem or "").split("tag '")[-1].rstrip("'")
        raise RecipeError(
            f"recipe {path}, line {line}: the YAML tag '{tag}' is not allowed "
            "(recipes are plain data; Python object tags are refused)"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"recipe {path}{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def load_recipes(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Read recipe files into one mapping, later files overriding earlier ones key by key, as
    ``fit --config a.yaml --config b.yaml`` combines them. ``${...}`` interpolations are kept as
    written (``OmegaConf.create`` of the result resolves them).

    Args:
        paths: the recipe files, in merge order.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, read_recipe_file(path))
    return merged


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (overlay wins), as several ``--config`` files combine.

    Args:
        base: the earlier config.
        overlay: the later config.
    """
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flat_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf and inner key of nested mappings.

    Args:
        data: a parsed recipe.
        prefix: dotted prefix of ``data``.
    """
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{key}"
            out[name] = value
            out.update(flat_keys(value, name + "."))
    return out


def check_command_line(argv: Sequence[str]) -> tuple[list[Path], dict[str, Any]]:
    """Check the recipe files and checkpoint path named on the command line.

    Returns the recipe files and their merged content (for locating keys in later errors).

    Args:
        argv: command-line arguments after the subcommand.
    """
    files = [Path(p) for p in option_values(argv, "--config", "-c")]
    merged = load_recipes(files)
    for ckpt in option_values(argv, "--ckpt_path"):
        if ckpt not in _CKPT_KEYWORDS and ckpt != "null":
            check_checkpoint_file(ckpt)
            check_architecture(ckpt, _model_overrides(merged, argv))
    return files, merged


def _model_overrides(merged: dict[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """Model-config fields the recipe files or the command line set explicitly."""
    prefix = "model.init_args.model."
    given = {
        k.removeprefix(prefix): v for k, v in flat_keys(merged).items() if k.startswith(prefix)
    }
    for i, arg in enumerate(argv):
        key, _, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--" + prefix):
            if not value and i + 1 < len(argv):
                value = argv[i + 1]
            given[key.removeprefix(prefix)] = yaml.safe_load(value)
    return given


def check_architecture(ckpt: str | Path, given: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model config differs from what the recipe sets explicitly.

    LightningCLI would otherwise replace the recipe's model arguments with the checkpoint's
    without a word, so ``--model.init_args.model.d_model 64`` silently trains at the old width.

    Args:
        ckpt: a checkpoint file.
        given: model-config fields set by the recipe or the command line.
    """
    from lit_unitscale.checkpoints import safe_load

    path = Path(ckpt)
    if not path.is_file() or not given:
        return
    saved = safe_load(path).get("model_config") or {}
    # Sizes left at 0 are filled from the data module, so 0 never disagrees.
    diff = {k: (saved[k], v) for k, v in given.items() if k in saved and v not in (0, saved[k])}
    if diff:
        raise CheckpointMismatchError(
            f"checkpoint {path}: architecture does not match the recipe (checkpoint/recipe): "
            + ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items())
        )


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a missing, truncated or non-torch checkpoint file without unpickling it.

    ``torch.save`` writes a zip archive whose directory sits at the end of the file, so a
    truncated or overwritten file fails this check (sharded checkpoint folders are left to the
    strategy).

    Args:
        path: the ``--ckpt_path`` value.
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise CheckpointFileError(f"checkpoint {path}: file not found (--ckpt_path)")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise CheckpointFileError(
            f"checkpoint {path}: truncated or corrupt (not a complete torch.save archive); "
            "use an earlier checkpoint or start without --ckpt_path"
        )
