"""Every tool parses its command line with jsonargparse through ``tools/arguments.py``: a bad
argument is one line naming the flag as typed and exit status 2, ``--help`` works; and one
function reads recipe files into one merged mapping for the CLI and the tools."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from lit_unitscale.cli.main import TOOLS
from lit_unitscale.cli.main import main as cli_main
from lit_unitscale.cli.recipe_check import load_recipes
from lit_unitscale.errors import RecipeError, ToolError
from lit_unitscale.tools.arguments import (
    documented,
    parse_arguments,
    subcommand_parser,
    tool_parser,
)

ROOT = Path(__file__).resolve().parents[2]


def uses_tool_parser(tool: str) -> bool:
    """Whether ``tool``'s module builds its parser with :func:`tool_parser` (read, not imported).

    Args:
        tool: a name in ``TOOLS``.
    """
    spec = importlib.util.find_spec(TOOLS[tool][0])
    assert spec is not None and spec.origin is not None, tool
    return "tool_parser(" in Path(spec.origin).read_text()


PARSED = sorted(t for t in TOOLS if uses_tool_parser(t))
# Words a tool needs before its options (a subcommand).
LEADING = {"slurm": ["render"]}


def test_every_tool_but_generate_uses_the_shared_parser() -> None:
    assert set(TOOLS) - set(PARSED) <= {"generate"}, sorted(set(TOOLS) - set(PARSED))


@pytest.fixture(scope="module")
def refusals() -> dict[str, subprocess.CompletedProcess]:
    """``python -m lit_unitscale <tool> --no-such-flag`` for every tool, run side by side."""
    env = {**os.environ, "LIT_UNITSCALE_DEBUG": "0"}
    running = {
        tool: subprocess.Popen(
            [sys.executable, "-m", "lit_unitscale", tool, *LEADING.get(tool, []), "--no-such-flag"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tool in PARSED
    }
    done = {}
    for tool, proc in running.items():
        out, err = proc.communicate(timeout=300)
        done[tool] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("tool", PARSED)
def test_a_bad_flag_is_one_line_and_exit_2(
    tool: str, refusals: dict[str, subprocess.CompletedProcess]
) -> None:
    result = refusals[tool]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].removeprefix("lit_unitscale: ") == (
        f"{tool}: unrecognized arguments: --no-such-flag (see --help)"
    ), result.stderr
    assert all("--debug" in line for line in lines[1:]), result.stderr  # only the usual hint
    assert result.stdout == ""


@pytest.mark.parametrize("tool", PARSED)
def test_help_works(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main([tool, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m lit_unitscale {tool}"), out[:200]
    assert "--help" in out
    assert "<class" not in out, "a type shown as its repr"


def parser_with_options():
    parser = tool_parser("demo", "a demo tool")
    parser.add_argument("--vocab-size", type=int | None, default=None, help="vocabulary")
    parser.add_argument("--kind", type=Literal["a", "b"], default="a", help="kind")
    parser.add_argument("--config", action="append", required=True, help="recipe")
    commands = parser.add_subcommands(required=False, dest="command")
    sub = subcommand_parser("the run subcommand")
    sub.add_argument("--nodes", type=int, default=1, help="nodes")
    commands.add_subcommand("run", sub)
    return parser


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "a", "--vocab-size", "x"], "demo: --vocab-size: expected int, got x"),
        (["--config", "a", "--kind", "c"], "demo: --kind: expected one of 'a', 'b', got c"),
        ([], "demo: missing --config"),
        (["--config", "a", "run", "--nodes", "2\n3"], "demo: --nodes: expected int, got 2"),
    ],
)
def test_refusals_name_the_flag_as_typed(argv: list[str], message: str) -> None:
    with pytest.raises(ToolError) as error:
        parse_arguments(parser_with_options(), argv, ToolError, "demo")
    text = str(error.value)
    assert text.startswith(message) and text.endswith(" (see --help)"), text
    assert "\n" not in text and error.value.exit_code == 2


def test_subcommand_options_are_nested_under_its_name() -> None:
    args = parse_arguments(
        parser_with_options(), ["--config", "a", "run", "--nodes", "3"], ToolError, "demo"
    )
    assert args.command == "run" and args.run.nodes == 3 and args.config == ["a"]


def test_help_comes_from_the_documented_function() -> None:
    def run(inputs: list[str], out: str) -> None:
        """Run.

        Args:
            inputs: the ``corpora``, a long text
                that continues here.
            out: folder.
        """

    assert documented(run) == {
        "inputs": "the corpora, a long text that continues here.",
        "out": "folder.",
    }


def test_recipes_merge_in_order_and_read_yaml_1_2_numbers(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  max_steps: 10\n  precision: 32\nlr: 1e-3\n")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_steps: 20\nsteps: ${trainer.max_steps}\n")
    merged = load_recipes([base, overlay])
    assert merged["trainer"] == {"max_steps": 20, "precision": 32}
    assert merged["lr"] == 1e-3 and merged["steps"] == "${trainer.max_steps}"
    from lit_unitscale.tools.slurm import resolved_recipe

    assert resolved_recipe([str(base), str(overlay)]).steps == 20  # the tools' resolved view


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, "recipe {path}: file not found"), ("a: [1\n", "recipe {path}, line 2, column 1")],
)
def test_a_recipe_that_cannot_be_read_is_one_line_naming_it(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load_recipes([path])
    assert str(error.value).startswith(expected.format(path=path)), error.value
    assert "\n" not in str(error.value)
