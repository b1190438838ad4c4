"""Command-line entry: Lightning subcommands (fit/validate/test/predict) and tool subcommands.

python -m lit_unitscale fit --config recipes/decoder/ptb-tiny.yaml [--config overlay.yaml]
python -m lit_unitscale <tool> ...      # slurm, scales, coord-check, sweep, export, dashboard
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Tool subcommands: name -> (module with `main(argv) -> int`, one-line help).
TOOLS: dict[str, tuple[str, str]] = {
    "slurm": ("lit_unitscale.tools.slurm", "render or submit an sbatch job from a recipe"),
    "scales": ("lit_unitscale.tools.scales", "offline scale dashboard from a run's scales.jsonl"),
    "coord-check": ("lit_unitscale.tools.coord_check", "activation RMS vs width, umup beside sp"),
    "sweep": ("lit_unitscale.tools.sweep", "learning-rate x width grid and scaling-law fit"),
    "tune": ("lit_unitscale.tools.tune", "u-μP hyperparameters on a proxy -> tuned overlay"),
    "export": ("lit_unitscale.tools.export", "checkpoint -> native or transformers folder"),
    "dashboard": ("lit_unitscale.tools.dashboard", "push the W&B scale workspace"),
    "generate": ("lit_unitscale.tools.generate", "continue prompts with a trained decoder"),
    "prepare": ("lit_unitscale.tools.prepare", "tokenize a corpus once into token shards"),
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


def _recipe_cli_class():
    from lightning.pytorch.cli import LightningCLI

    from lit_unitscale.cli import run_dir

    class RecipeCLI(LightningCLI):
        """LightningCLI whose run artifacts all follow ``trainer.default_root_dir`` and whose
        Trainer, strategy and callback values are refused in one line, like recipe keys."""

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except Exception as error:
                if not _raised_validating(error):
                    raise
                config = self.config[self.subcommand] if self.subcommand else self.config
                raise _trainer_value_error(error, config.trainer) from error
            for logger in self.trainer.loggers:
                # Lightning passes wandb a deprecated `anonymous` setting, which it warns about.
                getattr(logger, "_wandb_init", {}).pop("anonymous", None)
            # wandb looks for the code's git repository from the run directory: make it exist.
            Path(self.trainer.default_root_dir).mkdir(parents=True, exist_ok=True)

        def parse_arguments(self, parser, args) -> None:
            # --print_config prints while parsing, before before_instantiate_classes: show it
            # the run directory's paths too (a jsonargparse hook; jsonargparse is pinned).
            from jsonargparse._actions import _ActionPrintConfig

            original = _ActionPrintConfig.print_config_if_requested

            def print_with_run_paths(sub_parser, cfg) -> None:
                request = getattr(sub_parser, "print_config", None)
                if request is not None:
                    key = request.get("key")
                    trainer = (cfg[key] if key else cfg).get("trainer")
                    root = getattr(trainer, "default_root_dir", None)
                    if root is not None:
                        run_dir.point_artifacts_at(trainer, root)
                original(sub_parser, cfg)

            _ActionPrintConfig.print_config_if_requested = staticmethod(print_with_run_paths)
            try:
                super().parse_arguments(parser, args)
            finally:
                _ActionPrintConfig.print_config_if_requested = staticmethod(original)

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = config.trainer.default_root_dir
            if root is None:
                return
            run_dir.point_artifacts_at(config.trainer, root)
            if self.subcommand == "fit" and config.get("ckpt_path") is None:
                run_dir.refuse_taken(root)

    return RecipeCLI


# Where a constructor validates the values a recipe carries: an exception raised there (and not
# one of ours) is a user mistake in those values, not a bug.
_VALIDATING = (
    f"{os.sep}lightning{os.sep}",
    f"{os.sep}lit_unitscale{os.sep}callbacks{os.sep}",
    f"{os.sep}lit_unitscale{os.sep}strategies{os.sep}",
)
_TRAINER_KEYS = ("strategy", "accelerator", "devices", "num_nodes", "precision", "plugins")


def _raised_validating(error: BaseException) -> bool:
    import traceback

    # Ours are already worded for the user; Lightning's MisconfigurationException has its own
    # explanation (lit_unitscale.cli.explain).
    from lit_unitscale.cli.explain import is_misconfiguration
    from lit_unitscale.errors import LitUnitscaleError

    if isinstance(error, LitUnitscaleError) or is_misconfiguration(error):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in _VALIDATING)


def _trainer_value_error(error: BaseException, trainer: object) -> Exception:
    """A :class:`TrainerValueError` naming what Lightning's refusal is about: the callback or
    strategy whose constructor raised it, else the Trainer key its message names."""
    from lightning.pytorch import Callback
    from lightning.pytorch.strategies import Strategy

    from lit_unitscale.errors import TrainerValueError

    sentences = str(error).strip().split("\n\n")[0].split(". ")
    text = ". ".join(s for s in sentences if "http" not in s).strip()
    text = " ".join(text.split())
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    owner = tb.tb_frame.f_locals.get("self") if tb is not None else None
    if isinstance(owner, Callback):
        return TrainerValueError(text, "trainer.callbacks", type(owner).__name__)
    if isinstance(owner, Strategy):
        return TrainerValueError(text, "trainer.strategy", type(owner).__name__)
    lowered = text.lower()
    if "xla" in lowered or "tpu" in lowered:
        lowered += " accelerator"
    for key in _TRAINER_KEYS:
        if key in lowered or key.rstrip("s") in lowered:
            value = getattr(trainer, key, None)
            return TrainerValueError(text, f"trainer.{key}", getattr(value, "class_path", value))
    return TrainerValueError(text)


def make_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``).
        run: run the subcommand; with False only parse and instantiate (for tests).
    """
    from lit_unitscale.callbacks.progress import RunSummary
    from lit_unitscale.cli import console
    from lit_unitscale.data.base import BaseDataModule
    from lit_unitscale.tasks.base import UnitScaledTask

    console.quiet()
    _configure_jsonargparse()
    return _recipe_cli_class()(
        UnitScaledTask,
        BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        # Resuming into an existing run directory must not abort on config.yaml.
        save_config_kwargs={"overwrite": True},
        # The run summary replaces Lightning's model summary (whose FLOPs column reads 0).
        trainer_defaults={"callbacks": [RunSummary()], "enable_model_summary": False},
        args=args,
        run=run,
    )


def _debug(argv: list[str]) -> bool:
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["LIT_UNITSCALE_DEBUG"] = "1"
    return os.environ.get("LIT_UNITSCALE_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def _parser_errors_raise() -> Iterator[None]:
    """Parser errors raise instead of printing the whole usage and exiting, so ``main`` can
    name the file and key in one line (jsonargparse's ``exit_on_error=False`` behaviour)."""
    import argparse

    from jsonargparse import ArgumentParser

    original = ArgumentParser.error

    def error(self: ArgumentParser, message: str, ex: Exception | None = None) -> None:
        raise argparse.ArgumentError(None, message) from ex

    ArgumentParser.error = error
    try:
        yield
    finally:
        ArgumentParser.error = original


def _fail(message: str, code: int) -> None:
    print(f"lit_unitscale: {message}", file=sys.stderr)
    print("(--debug or LIT_UNITSCALE_DEBUG=1 shows the traceback)", file=sys.stderr)
    sys.exit(code)


def _flush_denormals() -> None:
    # Denormal arithmetic is ~100x slower on x86 CPUs and made u-μP steps 2-5x slower here.
    # The flag is per thread and worker threads copy it when they start, so set it before
    # torch starts its thread pool (the task's setup() sets it again for library users).
    import torch

    torch.set_flush_denormal(True)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``python -m lit_unitscale <subcommand> ...``.

    A user mistake (recipe, data, checkpoint, machine) prints one message and exits non-zero;
    ``--debug`` or ``LIT_UNITSCALE_DEBUG=1`` shows the traceback instead.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    from lit_unitscale.cli.recipe_check import check_command_line, check_subcommand
    from lit_unitscale.errors import LitUnitscaleError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        try:
            sys.exit(module.main(argv[1:]))
        except LitUnitscaleError as error:
            if debug:
                raise
            _fail(str(error), error.exit_code)
    os.environ.setdefault("WANDB_MODE", "offline")
    _flush_denormals()
    if not argv or argv[0] in ("-h", "--help"):
        try:
            make_cli(argv or ["--help"])
        finally:
            print("\n" + _tools_epilog())
    files, merged = [], {}
    try:
        check_subcommand(argv, [*LIGHTNING_SUBCOMMANDS, *TOOLS])
        files, merged = check_command_line(argv[1:])
        # LightningCLI warns when given args beside a different sys.argv: make them agree.
        sys.argv = [sys.argv[0], *argv]
        with _parser_errors_raise():
            make_cli(None)
    except (Exception, SystemExit) as error:
        if isinstance(error, SystemExit) and _stopped_by_signal():
            return
        if debug or isinstance(error, SystemExit):
            raise
        from lit_unitscale.cli.explain import context_from, explain

        message = explain(error, context_from(argv, files, merged))
        if message is None:
            raise  # not a user mistake: keep the traceback
        _fail(message, getattr(error, "exit_code", 2))
    _stopped_by_signal()


def _stopped_by_signal() -> bool:
    """Report a Ctrl-C/SIGTERM stop (checkpoint written) and exit 128 + signal number."""
    import signal

    stop = getattr(sys.modules.get("lit_unitscale.callbacks.signals"), "last_stop", None)
    if not stop:
        return False
    print(
        f"lit_unitscale: stopped by {stop['signal']} after step {stop['step']}; checkpoint "
        f"saved to {stop['path']}. Run the same command with --ckpt_path last to resume.",
        file=sys.stderr,
    )
    sys.exit(128 + int(getattr(signal, stop["signal"])))
