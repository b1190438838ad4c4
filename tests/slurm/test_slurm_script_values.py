"""Every value that reaches the job script is checked for its place or refused in one line.

The property, for arbitrary text in each `slurm` option, in the recipe file name and in the
arguments after `--` (newlines, quotes, `$(...)`, backticks, `#SBATCH` included): either the
script is the one rendered with benign values with that value put in its place (verbatim in its
`#SBATCH` line, shell-quoted in shell text), so the `#SBATCH` lines are exactly the expected ones
and the shell body is unchanged, or the command prints one line naming the option, prints no
script and exits non-zero. Runs anywhere; no cluster needed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_unitscale.tools import slurm

RECIPE = "trainer:\n  max_steps: 3\nseed_everything: 1\n"
# Text a shell or sbatch would read as code or as another directive, mixed into arbitrary text.
HOSTILE = st.sampled_from(
    ["\n", "\n#SBATCH --uid=0\n", "$(touch pwned)", "`id`", "'", '"', "\\", ";", " ", "%j", "#"]
)
TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(st.text(max_size=4), HOSTILE), max_size=5).map("".join),
)
NAME = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")


class Job:
    """Benign values for every option, files they need, and rendering with one value swapped.

    Args:
        root: a scratch directory for recipes, virtual environments and working directories.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "recipes").mkdir()
        (root / "venvs").mkdir()
        (root / "cwds").mkdir()
        self.recipe = root / "recipes" / "benign-recipe.yaml"
        self.recipe.write_text(RECIPE)
        self.venv = root / "benign-venv"
        (self.venv / "bin").mkdir(parents=True)
        (self.venv / "bin" / "activate").write_text("")
        self.out = root / "benign-out"
        self.options = {
            "--config": str(self.recipe),
            "--nodes": "3",
            "--gpus-per-node": "5",
            "--cpus-per-task": "7",
            "--accelerator": "gpu",
            "--partition": "benignpart",
            "--account": "benignacct",
            "--time": "01:00:00",
            "--job-name": "benignjob",
            "--output-dir": str(self.out),
            "--master-addr": "benign.host",
            "--venv": str(self.venv),
        }
        self.extra = ["--benign.arg"]
        code, self.script, err = self.render()
        assert code == 0, err

    def render(
        self, swap: dict[str, str | None] | None = None, extra: list[str] | None = None
    ) -> tuple[int, str, str]:
        """``slurm render`` with the benign options, some replaced (None: left out).

        Returns the exit status, stdout and stderr.

        Args:
            swap: options to replace or drop.
            extra: arguments after ``--`` (default: the benign one).
        """
        options = {**self.options, **(swap or {})}
        argv = ["render"] + [f"{k}={v}" for k, v in options.items() if v is not None]
        argv += ["--", *(self.extra if extra is None else extra)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = slurm.main(argv)
            except SystemExit as exit_:
                code = exit_.code
        return code, out.getvalue(), err.getvalue()


def replaced(script: str, old: str, new: str, count: int = 1) -> str:
    """``script`` with ``old`` (which must occur exactly ``count`` times) replaced by ``new``.

    Args:
        script: the benign script.
        old: the benign value as it is written there.
        new: the value expected in its place.
        count: how often the benign value occurs.
    """
    assert script.count(old) == count, (old, script.count(old))
    return script.replace(old, new)


def directives(script: str) -> list[str]:
    """The script's ``#SBATCH`` lines, in order.

    Args:
        script: a rendered job script.
    """
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def check(job: Job, flag: str, result: tuple[int, str, str], expected: str | None) -> None:
    """Either the script equals ``expected`` (and parses) or the run was refused in one line.

    Args:
        job: the benign job.
        flag: the option the changed value went to, which a refusal must name.
        result: exit status, stdout and stderr of the render.
        expected: the script the value must give; None when it must be refused.
    """
    code, out, err = result
    if code == 0 and expected is not None:
        assert out == expected
        assert directives(out) == directives(expected)
        subprocess.run(["bash", "-n"], input=out, text=True, check=True)
        return
    assert code != 0, f"accepted, but the script should be\n{expected}\ngot\n{out}"
    assert out == ""
    assert err.startswith("slurm: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert flag in err, err


def int_option(value: str) -> int | None:
    """What argparse makes of ``value`` for an int option, None when it or the check refuses it.

    Args:
        value: the option's text.
    """
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 1 else None


def expect_sbatch_line(name: str, pattern: re.Pattern[str]) -> Callable[[Job, str], str | None]:
    """Expected script for a value that goes verbatim into ``#SBATCH --<name>=``.

    Args:
        name: the sbatch option (partition, account, time).
        pattern: the values the renderer must accept.
    """

    def expect(job: Job, value: str) -> str | None:
        if not pattern.fullmatch(value):
            return None
        old = job.options[f"--{name}"]
        return replaced(job.script, f"#SBATCH --{name}={old}\n", f"#SBATCH --{name}={value}\n")

    return expect


def expect_job_name(job: Job, value: str, script: str | None = None) -> str | None:
    """Expected script for job name ``value``.

    Args:
        job: the benign job.
        value: the job name.
        script: the script to put it in (default: the benign one).
    """
    if not slurm.JOB_NAME.fullmatch(value):
        return None
    script = replaced(script or job.script, "--job-name=benignjob\n", f"--job-name={value}\n")
    # The W&B run id takes the job name with anything but [A-Za-z0-9_-] as '-'.
    wandb = re.sub(r"[^A-Za-z0-9_-]", "-", value)
    return replaced(script, "WANDB_RUN_ID=benignjob-", f"WANDB_RUN_ID={wandb}-")


def directive_path_ok(path: str) -> bool:
    """Whether a path may stand in an ``#SBATCH`` line (stated here, not read from the code).

    Args:
        path: an absolute path.
    """
    return path.isprintable() and not any(ch in " \"'\\%#" for ch in path)


def expect_output_dir(job: Job, value: str) -> str | None:
    path = str(Path(value).absolute()) if "\0" not in value else "\0"
    if not directive_path_ok(path):
        return None
    return replaced(job.script, f"={job.out}/%x-%j.", f"={path}/%x-%j.", count=2)


def expect_master_addr(job: Job, value: str) -> str | None:
    if value and not slurm.HOST.fullmatch(value):
        return None
    return replaced(job.script, "MASTER_ADDR=benign.host\n", f"MASTER_ADDR={shlex.quote(value)}\n")


def expect_accelerator(job: Job, value: str) -> str | None:
    if value == "gpu":
        return job.script
    if value != "cpu":
        return None
    script = replaced(job.script, "#SBATCH --gpus-per-node=5\n", "")
    return replaced(script, "--trainer.accelerator gpu", "--trainer.accelerator cpu")


def expect_count(benign: str, lines: list[str]) -> Callable[[Job, str], str | None]:
    """Expected script for an int option whose benign value ``benign`` is written in ``lines``.

    Args:
        benign: the benign value.
        lines: format strings with ``{}`` where the number goes.
    """

    def expect(job: Job, value: str) -> str | None:
        number = int_option(value)
        if number is None:
            return None
        script = job.script
        for line in lines:
            script = replaced(script, line.format(benign), line.format(number))
        return script

    return expect


SCALAR_FLAGS: dict[str, tuple[st.SearchStrategy[str], Callable[[Job, str], str | None]]] = {
    "--job-name": (st.one_of(TEXT, NAME), expect_job_name),
    "--partition": (
        st.one_of(TEXT, NAME, st.lists(NAME, min_size=2, max_size=3).map(",".join)),
        expect_sbatch_line("partition", slurm.PARTITIONS),
    ),
    "--account": (st.one_of(TEXT, NAME), expect_sbatch_line("account", slurm.ACCOUNT)),
    "--time": (
        st.one_of(
            TEXT,
            st.from_regex(r"\A([0-9]{1,3}-)?[0-9]{1,2}(:[0-9]{2}){0,2}\Z"),
            st.sampled_from(["UNLIMITED", "INFINITE"]),
        ),
        expect_sbatch_line("time", slurm.TIME),
    ),
    "--output-dir": (
        st.one_of(TEXT, st.from_regex(r"\A[A-Za-z0-9_./-]{1,30}\Z")),
        expect_output_dir,
    ),
    "--master-addr": (
        st.one_of(TEXT, st.from_regex(r"\A[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,20}\Z")),
        expect_master_addr,
    ),
    "--accelerator": (st.one_of(TEXT, st.sampled_from(["gpu", "cpu"])), expect_accelerator),
    "--nodes": (
        st.one_of(TEXT, st.integers(-2, 64).map(str)),
        expect_count("3", ["#SBATCH --nodes={}\n", "--trainer.num_nodes {} "]),
    ),
    "--gpus-per-node": (
        st.one_of(TEXT, st.integers(-2, 64).map(str)),
        expect_count(
            "5",
            [
                "#SBATCH --ntasks-per-node={}\n",
                "#SBATCH --gpus-per-node={}\n",
                "--trainer.devices {} ",
            ],
        ),
    ),
    "--cpus-per-task": (
        st.one_of(TEXT, st.integers(-2, 64).map(str)),
        expect_count("7", ["#SBATCH --cpus-per-task={}\n"]),
    ),
    # Not rendered: a template that is not there is refused, whatever its name.
    "--template": (TEXT, lambda job, value: None),
}

EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """The benign job, in a scratch directory shared by the module's tests."""
    return Job(tmp_path_factory.mktemp("slurm-values"))


@pytest.mark.parametrize("flag", sorted(SCALAR_FLAGS))
@EXAMPLES
@given(data=st.data())
def test_option_value_is_placed_or_refused(job: Job, flag: str, data: st.DataObject) -> None:
    strategy, expect = SCALAR_FLAGS[flag]
    value = data.draw(strategy, label=flag)
    check(job, flag, job.render({flag: value}), expect(job, value))


def make_file(path: Path, text: str) -> bool:
    """Write ``text`` to ``path``; False when the file system refuses the name.

    Args:
        path: the file to create (its parent exists).
        text: the content.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except (OSError, ValueError):
        return False
    return True


FILE_NAME = TEXT.filter(lambda name: "/" not in name)


@EXAMPLES
@given(name=st.one_of(FILE_NAME, NAME.map(lambda n: f"{n}.yaml")), job_name=st.booleans())
def test_recipe_file_name_is_quoted_or_refused(job: Job, name: str, job_name: bool) -> None:
    """Any file name: the path is shell-quoted on fit's command line; its stem is the default
    job name only when it is a valid one. ``job_name``: whether --job-name is given."""
    path = job.root / "recipes" / name
    if not make_file(path, RECIPE):
        path = job.root / "recipes" / "missing" / name
    result = job.render({"--config": str(path), "--job-name": "benignjob" if job_name else None})
    expected, flag = None, "--config"
    if str(path).isprintable() and slurm.is_file(path):
        quoted = f"--config {shlex.quote(str(path))} "
        expected = replaced(job.script, f"--config {job.recipe} ", quoted)
        if not job_name:
            expected, flag = expect_job_name(job, path.stem, expected), "--job-name"
    check(job, flag, result, expected)


@EXAMPLES
@given(name=st.one_of(FILE_NAME, NAME))
def test_venv_path_is_quoted_or_refused(job: Job, name: str) -> None:
    path = job.root / "venvs" / name
    if not make_file(path / "bin" / "activate", ""):
        path = job.root / "venvs" / "missing" / name
    expected = None
    if str(path).isprintable() and slurm.is_file(path / "bin" / "activate"):
        old = f". {shlex.quote(str(job.venv / 'bin' / 'activate'))}\n"
        new = f". {shlex.quote(str(path / 'bin' / 'activate'))}\n"
        expected = replaced(job.script, old, new)
    check(job, "--venv", job.render({"--venv": str(path)}), expected)


@EXAMPLES
@given(args=st.lists(TEXT, min_size=1, max_size=4))
def test_arguments_after_dashes_are_quoted_or_refused(job: Job, args: list[str]) -> None:
    expected = None
    if all(arg.isprintable() for arg in args):
        expected = replaced(job.script, " --benign.arg ", f" {shlex.join(args)} ")
    check(job, "argument after --", job.render(extra=args), expected)


@EXAMPLES
@given(name=st.one_of(FILE_NAME, NAME))
def test_working_directory_is_placed_or_refused(job: Job, name: str) -> None:
    """The job runs where the command runs (#SBATCH --chdir)."""
    folder = job.root / "cwds" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError):
        return  # the file system takes no such directory, so no one can run from it
    before = os.getcwd()
    try:
        os.chdir(folder)
        cwd = os.getcwd()
        result = job.render()
    finally:
        os.chdir(before)
    old = f"#SBATCH --chdir={before}\n"
    expected = (
        replaced(job.script, old, f"#SBATCH --chdir={cwd}\n") if directive_path_ok(cwd) else None
    )
    check(job, "the current directory", result, expected)


def test_the_reported_injection_is_refused(job: Job) -> None:
    """A job name that would add a directive and run a command on every node of the job."""
    result = job.render({"--job-name": "x\n#SBATCH --uid=0\necho pwned"})
    check(job, "--job-name", result, None)
    assert result[2] == (
        "slurm: --job-name 'x\\n#SBATCH --uid=0\\necho pwned': expected 1-128 letters, "
        "digits, '_', '.' or '-', not starting with '.' or '-'\n"
    )


def test_no_array_expansion_for_old_bash(job: Job) -> None:
    """bash 4.3 and older (still the system shell on some clusters) abort under `set -u` when an
    empty array is expanded: the job script uses no arrays at all."""
    assert "set -euo pipefail" in job.script
    assert not re.search(r"\[[@*]\]|\w=\(", job.script), re.findall(
        r".*\[[@*]\].*|.*\w=\(.*", job.script
    )
