"""The command lines of the tool subcommands: every tool parses with jsonargparse, the CLI's own
library, and reports a bad argument the same way, as one line naming the flag as typed.

    parser = tool_parser("prepare", "tokenize a corpus once into token shards")
    parser.add_argument("--vocab-size", type=int | None, default=None, help="...")
    args = parse_arguments(parser, argv, PrepareError, "prepare")
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from lit_unitscale.errors import LitUnitscaleError

EXIT_USAGE = 2


class _HelpFormatter(DefaultHelpFormatter):
    # jsonargparse writes a plain class as its repr ("<class 'Path'>"); users read "Path".
    def _get_type_str(self, action: argparse.Action) -> str | None:
        text = super()._get_type_str(action)
        return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text) if text else text


def tool_parser(tool: str, description: str, prog: str | None = None) -> ArgumentParser:
    """A tool's parser: errors raise (for :func:`parse_arguments`) instead of exiting.

    Args:
        tool: the subcommand's name, as typed after ``python -m lit_unitscale``.
        description: the first paragraph of ``--help``.
        prog: the command shown in ``--help`` (default ``python -m lit_unitscale <tool>``).
    """
    return ArgumentParser(
        prog=prog or f"python -m lit_unitscale {tool}",
        description=description,
        exit_on_error=False,
        formatter_class=_HelpFormatter,
    )


def subcommand_parser(description: str) -> ArgumentParser:
    """The parser of one subcommand of a tool (``slurm submit``); errors raise like the tool's.

    Args:
        description: the subcommand's ``--help`` text.
    """
    return ArgumentParser(
        description=description, exit_on_error=False, formatter_class=_HelpFormatter
    )


def parse_arguments(
    parser: ArgumentParser,
    argv: Sequence[str] | None,
    error: Callable[[str], LitUnitscaleError],
    tool: str,
) -> Namespace:
    """``parser``'s namespace for ``argv``; a bad argument raises ``error`` with one line,
    ``<tool>: <what is wrong> (see --help)``, and exit status 2 (``--help`` still prints and
    exits 0).

    Args:
        parser: from :func:`tool_parser`.
        argv: the arguments after the tool's name (default ``sys.argv[1:]``).
        error: the tool's error class (a :class:`LitUnitscaleError`), given the message.
        tool: the tool's name, which starts the message.
    """
    try:
        return parser.parse_args(None if argv is None else list(argv))
    except argparse.ArgumentError as refusal:
        refused = error(f"{tool}: {one_line(parser, str(refusal))} (see --help)")
        refused.exit_code = EXIT_USAGE
        raise refused from None


def one_line(parser: ArgumentParser, message: str) -> str:
    """jsonargparse's explanation as one line that names the option as the user typed it
    (``--vocab-size``, not the key ``vocab_size``).

    Args:
        parser: the parser that refused the arguments (its subcommands included).
        message: the refusal's text, possibly several lines.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["?"]
    flags = option_names(parser)
    key = re.fullmatch(r'Parser key "([^"]+)"(.*):', lines[0])
    if key:
        name = flags.get(key.group(1), key.group(1))
        details = [line.lstrip("- ") for line in lines[1:]]
        # A union lists why each member refused: the first member's reason is the useful one.
        reason = next((d for d in details if d.startswith("Expected")), None)
        given = next((d for d in details if d.startswith("Given value:")), None)
        text = f"{name}{key.group(2)}: {reason or (details[0] if details else 'invalid')}"
        if given and "Got value:" not in text:
            text += f", got {given.removeprefix('Given value:').strip()}"
    else:
        text = lines[0]
        required = re.fullmatch(r"the following arguments are required: (.*)", text)
        missing = re.fullmatch(
            r'expected "[^"]+" to be one of \{(.*)\}, but it was not provided\.', text
        )
        unknown = re.fullmatch(r"argument \S+: invalid choice: (.*) \(choose from (.*)\)", text)
        if required:
            names = [flags.get(n.strip(), n.strip()) for n in required.group(1).split(",")]
            text = f"missing {', '.join(names)}"
        elif missing:
            text = f"give a subcommand: {missing.group(1).replace(',', ', ')}"
        elif unknown and not unknown.group(0).startswith("argument -"):
            text = f"unknown subcommand {unknown.group(1)}; choose from {unknown.group(2)}"
    text = re.sub(r"Expected an? <class '(?:builtins\.)?([\w.]+)'>", r"expected \1", text)
    text = text.replace(". Got value: ", ", got ")
    text = re.sub(r"Expected an? typing\.Literal\[(.*?)\]", r"expected one of \1", text)
    text = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text)
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def option_names(parser: ArgumentParser, prefix: str = "") -> dict[str, str]:
    """``{"vocab_size": "--vocab-size"}`` for every option of ``parser`` and its subcommands
    (the keys of a subcommand's options are ``render.nodes``, its flags still ``--nodes``).

    Args:
        parser: a jsonargparse parser.
        prefix: the key prefix of ``parser``'s options.
    """
    names: dict[str, str] = {}
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # subcommands: name -> parser
            for name, sub in choices.items():
                if isinstance(sub, ArgumentParser):
                    names.update(option_names(sub, f"{prefix}{name}."))
            continue
        long = [s for s in action.option_strings if s.startswith("--")]
        names[prefix + action.dest] = long[0] if long else action.dest
        # A subcommand's own parser names its keys without the prefix.
        names.setdefault(action.dest, names[prefix + action.dest])
    return names


def documented(function: Callable[..., Any]) -> dict[str, str]:
    """Each argument's text in ``function``'s ``Args:`` section, as one line: the help of the
    flags that set them, written once.

    Args:
        function: a function or class with a Google-style docstring.
    """
    import docstring_parser

    parsed = docstring_parser.parse(function.__doc__ or "")
    # ``code`` is markup for the API docs; --help shows plain text.
    return {
        p.arg_name: " ".join((p.description or "").replace("``", "").split()) for p in parsed.params
    }
