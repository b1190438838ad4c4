"""Turn an exception raised while parsing or running a recipe into one short message for the
user, or ``None`` when it is not a user mistake (a bug keeps its traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_type_hints

from lit_unitscale.cli.recipe_check import flat_keys, option_values, read_recipe_file
from lit_unitscale.errors import (
    LitUnitscaleError,
    TrainerValueError,
    TrainingFault,
    did_you_mean,
)

_UNION = "Does not validate against any of the Union subtypes"
_TOP_LEVEL = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler")


@dataclasses.dataclass
class Context:
    """What the command line said, for naming files and keys in messages."""

    subcommand: str
    """fit, validate, test or predict."""
    files: list[Path]
    """Recipe files in the order given."""
    merged: dict[str, Any]
    """Their merged content."""
    argv: Sequence[str]
    """The command-line arguments after the subcommand."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_misconfiguration(error: BaseException) -> bool:
    # Lightning's refusal of trainer arguments the machine cannot run.
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(error, MisconfigurationException)


def explain(error: BaseException, ctx: Context) -> str | None:
    """One message for a user mistake anywhere in ``error``'s chain, else None.

    Args:
        error: the exception that ended the command.
        ctx: the command line it came from.
    """
    for item in _chain(error):
        module = type(item).__module__
        text = str(item)
        if isinstance(item, argparse.ArgumentError) or text.startswith(_UNION):
            return _parser_message(text, ctx)
        if module.startswith("omegaconf"):
            return _omegaconf_message(item, ctx)
        if is_misconfiguration(item):
            return _trainer_message(text, ctx)
        if isinstance(item, TrainingFault):
            return _first_paragraph(text)
        if isinstance(item, TrainerValueError):
            if item.key is None:
                return f"trainer: {text}"
            return f"{item.key}={item.value} {_where(item.key, ctx)}: {text}"
        if isinstance(item, LitUnitscaleError):
            return _with_recipe_key(_first_paragraph(text), ctx)
        if _is_bad_checkpoint(item):
            ckpt = (option_values(ctx.argv, "--ckpt_path") or ["the checkpoint"])[-1]
            if isinstance(item, pickle.UnpicklingError):
                found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
                what = f" ({found.group(1)})" if found else ""
                return (
                    f"checkpoint {ckpt}: refused by the safe loader (weights_only=True): it holds "
                    f"a Python object{what}, not only tensors and plain data"
                )
            reason = text.strip().splitlines()[0][:160]
            return f"checkpoint {ckpt}: truncated or corrupt ({reason})"
    return None


def _is_bad_checkpoint(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, pickle.UnpicklingError) or (
        isinstance(error, RuntimeError) and ("PytorchStreamReader" in text or "zip archive" in text)
    )


def _trainer_message(text: str, ctx: Context) -> str:
    """Lightning's refusals of trainer arguments (an accelerator the machine lacks)."""
    trainer = ctx.merged.get("trainer") or {}
    accelerator = next(iter(option_values(ctx.argv, "--trainer.accelerator")), None)
    accelerator = accelerator or trainer.get("accelerator")
    message = _first_paragraph(text)
    if accelerator not in (None, "cpu", "auto"):
        key = "trainer.accelerator"
        return (
            f"{key}={accelerator} {_where(key, ctx)}: {message} "
            "This machine can run accelerator: cpu (or auto)."
        )
    return f"trainer: {message}"


def _first_paragraph(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().split("\n\n")[0].splitlines())


def _with_recipe_key(message: str, ctx: Context) -> str:
    """Prefix the recipe key the message is about: the first leaf key whose name the message
    mentions, or whose value (a path, a class) it quotes."""
    found: list[tuple[int, str]] = []
    for key, value in flat_keys(ctx.merged).items():
        if isinstance(value, (dict, list)):
            continue
        last = key.rpartition(".")[2]
        named = re.search(rf"\b{re.escape(last)}\b", message)
        if named:
            found.append((named.start(), key))
        elif isinstance(value, str) and len(value) > 3 and value in message:
            found.append((message.index(value), key))
    if not found:
        return message
    key = min(found)[1]
    return f"{key} {_where(key, ctx)}: {message}"


# -- where a key came from, and what it could have been ---------------------------------------
def _where(key: str, ctx: Context) -> str:
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in ctx.argv):
        return "on the command line"  # overrides every recipe file
    for path in reversed(ctx.files):
        if key in flat_keys(read_recipe_file(path)):
            return f"in {path}"
    return "on the command line"


def _class_params(cls: Any) -> dict[str, Any]:
    """Constructor parameters (name -> annotation) through ``**kwargs`` to the bases."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.type for f in dataclasses.fields(cls)}
    params: dict[str, Any] = {}
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            hints = get_type_hints(klass.__init__)
        except Exception:
            hints = {}
        signature = inspect.signature(klass.__init__)
        for name, param in signature.parameters.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params.setdefault(name, hints.get(name, param.annotation))
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _candidates(key: str, ctx: Context) -> list[str]:
    """Keys accepted beside ``key`` (same parent), fully dotted."""
    parts = key.split(".")
    try:
        if len(parts) == 1:
            from lightning.pytorch import Trainer

            method = inspect.signature(getattr(Trainer, ctx.subcommand))
            return [*_TOP_LEVEL, "ckpt_path", "config", *method.parameters]
        if parts[0] == "trainer":
            from lightning.pytorch import Trainer

            return [f"trainer.{p}" for p in _class_params(Trainer)]
        if parts[0] in ("model", "data") and len(parts) > 2 and parts[1] == "init_args":
            cls = _import(ctx.merged[parts[0]]["class_path"])
            for part in parts[2:-1]:
                cls = _class_params(cls)[part]
            prefix = ".".join(parts[:-1])
            return [f"{prefix}.{p}" for p in _class_params(cls)]
    except Exception:
        return []
    return []


def _unknown_key(key: str, ctx: Context) -> str:
    return f"unknown key '{key}' {_where(key, ctx)}{did_you_mean(key, _candidates(key, ctx))}"


# -- jsonargparse -------------------------------------------------------------------------------
def _union_message(text: str, ctx: Context) -> str | None:
    """A class in a list (callbacks, loggers) whose constructor refused its arguments: jsonargparse
    reports it as a Union mismatch whose first listed error is the constructor's."""
    errors = re.findall(r"^\s+- (.*)$", text, re.M)
    cls = re.search(r"class_path='([\w.]+)'", text)
    if not errors or not cls or errors[0].startswith(("Not a valid", "Expected a")):
        return None
    path, subtypes = cls.group(1), text.split("Errors:")[0]
    if "Callback" in subtypes:
        key = "trainer.callbacks"
    elif "Logger" in subtypes:
        key = "trainer.logger"
    else:
        return None
    where = next(
        (f"in {f}" for f in reversed(ctx.files) if path in Path(f).read_text()),
        "on the command line",
    )
    return f"{key}={path.rpartition('.')[2]} {where}: {errors[0]}"


def _parser_message(text: str, ctx: Context) -> str:
    if text.startswith(_UNION):
        message = _union_message(text, ctx)
        if message is not None:
            return message
    # Innermost problem first: the last "Problem with given class_path" names the class.
    parent = re.findall(r'Parser key "([^"]+)"', text)
    if re.search(r"has no attribute|Import path|No module named", text):
        return _parser_class_message(text, parent, ctx)
    nested = re.search(r"Problem with given class_path '([^']+)':\s*(.*)", text, re.S)
    if nested:
        inner = nested.group(2)
        base = parent[0] if parent else "model"
        option = re.search(r"Option '([^']+)' is not accepted", inner) or re.search(
            r"unrecognized arguments: --([^\s=]+)", inner
        )
        if option:
            return _unknown_key(f"{base}.init_args.{option.group(1)}", ctx)
        group = re.search(r"Group '([^']+)' does not accept option '([^']+)'", inner)
        if group:
            return _unknown_key(f"{base}.init_args.{group.group(1)}.{group.group(2)}", ctx)
        key = re.search(r"Key '([^']+)'", inner)
        if key:
            return _unknown_key(f"{base}.init_args.{key.group(1)}", ctx)
        inner_key = re.findall(r'Parser key "([^"]+)"', inner)
        expected = re.search(r"Expected a <class '([^']+)'>. Got value: (.*)", inner)
        if inner_key and expected:
            full = f"{base}.init_args.{inner_key[-1]}"
            return _wrong_type(full, expected.group(1), expected.group(2), ctx)
        return f"{base}: {_innermost(inner)}"
    match = re.search(r"does not accept option '([^']+)'", text) or re.search(
        r"unrecognized arguments: --([^\s=]+)", text
    )
    if match:
        return _unknown_key(match.group(1), ctx)
    match = re.search(r"Expected a <class '([^']+)'>. Got value: (.*)", text)
    if match and parent:
        return _wrong_type(parent[-1], match.group(1), match.group(2), ctx)
    if parent:
        return f"{parent[-1]}: {_innermost(text)}"
    return _with_recipe_key(_innermost(text), ctx)


def _parser_class_message(text: str, parent: list[str], ctx: Context) -> str:
    match = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if match:
        return _unknown_class(f"{match.group(1)}.{match.group(2)}", parent, ctx)
    match = re.search(r"Import path ([\w.]+) does not exist|No module named '([\w.]+)'", text)
    path = (match.group(1) or match.group(2)) if match else "?"
    return _unknown_class(path, parent, ctx)


def _wrong_type(key: str, expected: str, got: str, ctx: Context) -> str:
    return f"{key} {_where(key, ctx)}: expected {expected}, got {got.strip()!r}"


def _innermost(text: str) -> str:
    lines = [
        line.strip(" -")
        for line in text.splitlines()
        if line.strip()
        and not re.match(
            r"\s*(- )?(Subtypes|Given value|Errors|Expected a <class 'NoneType')", line
        )
        and _UNION not in line
    ]
    return lines[-1] if lines else text.strip().splitlines()[-1]


def _unknown_class(class_path: str, parent: list[str], ctx: Context) -> str:
    module_name, _, name = class_path.rpartition(".")
    choices: list[str] = []
    try:
        module = importlib.import_module(module_name)
        choices = [f"{module_name}.{n}" for n, v in vars(module).items() if inspect.isclass(v)]
    except ImportError:
        pass
    key = f"{parent[0]}.class_path" if parent else "class_path"
    return f"{key} {_where(key, ctx)}: no class '{class_path}'{did_you_mean(class_path, choices)}"


# -- OmegaConf interpolation ----------------------------------------------------------------
def _omegaconf_message(error: BaseException, ctx: Context) -> str:
    text = str(error)
    full_key = (getattr(error, "full_key", None) or "").removeprefix(f"{ctx.subcommand}.")
    missing = re.search(
        r"Interpolation key '([^']+)' not found(?: \(resolved to '([^']+)'\))?", text
    )
    if not missing:
        return f"recipe error: {full_key}: {text.splitlines()[0]}"
    target = (missing.group(2) or missing.group(1).lstrip(".")).removeprefix(f"{ctx.subcommand}.")
    where = _where(full_key, ctx) if full_key else ""
    known = list(flat_keys(ctx.merged)) + _candidates("trainer.x", ctx)
    return (
        f"{full_key} {where}: the interpolation ${{{target}}} points at a key that is not set"
        f"{did_you_mean(target, known)}"
    )


def context_from(argv: Sequence[str], files: list[Path], merged: dict[str, Any]) -> Context:
    """A :class:`Context` for ``explain``.

    Args:
        argv: the full command line (subcommand first).
        files: recipe files named with ``--config``.
        merged: their merged content.
    """
    sub = argv[0] if argv and not argv[0].startswith("-") else "fit"
    return Context(subcommand=sub, files=files, merged=merged, argv=list(argv[1:]))
