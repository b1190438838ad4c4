"""Render or submit an sbatch job that trains a recipe: ``python -m lit_unitscale slurm ...``.

    python -m lit_unitscale slurm submit --config recipes/decoder/ptb-small.yaml \\
        --nodes 4 --gpus-per-node 8 --partition gpu --time 12:00:00 -- --trainer.max_steps 20000
    python -m lit_unitscale slurm render --config recipe.yaml --nodes 2 --gpus-per-node 1

The job script comes from ``lit_unitscale/tools/train.sbatch`` (shipped in the package).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Literal

from jsonargparse import ArgumentParser, Namespace
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_unitscale.cli.recipe_check import load_recipes, read_recipe_file
from lit_unitscale.errors import LitUnitscaleError, ToolError
from lit_unitscale.tools.arguments import parse_arguments, subcommand_parser, tool_parser

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "train.sbatch"  # package data
EXIT_USAGE = 2


class SlurmError(ToolError):
    """A problem the user can fix; printed as one line, never as a traceback (exit 1, or 2 for
    a recipe/option mismatch)."""

    exit_code = 1


# What may reach the job script. #SBATCH lines are read by sbatch, not by a shell: nothing can be
# quoted there, so their values are checked against what SLURM accepts. Values in shell text are
# quoted with shlex.quote and must only be free of control characters (a newline inside a quoted
# word is valid shell, but the script would no longer read one command per line).
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
JOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
ACCOUNT = re.compile(_NAME, re.ASCII)
PARTITIONS = re.compile(rf"{_NAME}(,{_NAME})*", re.ASCII)
# minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds (sbatch --time); UNLIMITED and INFINITE mean no limit.
TIME = re.compile(r"[0-9]+(:[0-9]+){0,2}|[0-9]+-[0-9]+(:[0-9]+){0,2}|UNLIMITED|INFINITE", re.ASCII)
HOST = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]*", re.ASCII)
# sbatch splits directive values at whitespace and reads quotes, backslashes and "%" patterns
# (%j, %x) in --output; "#" could start a comment.
DIRECTIVE_PATH_REFUSED = set(" \t\"'\\%#")
JOB_NAME_WORDS = "1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
TIME_WORDS = "a SLURM time such as 90, 12:00:00 or 1-00:00:00"


def is_file(path: str | Path) -> bool:
    """Whether ``path`` is a file; False (not an exception) for names the OS cannot take.

    Args:
        path: any user-given path, possibly too long or holding a NUL character.
    """
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def shown(value: str) -> str:
    """``value`` as one line for messages and comments: control characters escaped.

    Args:
        value: any text, possibly holding newlines or other control characters.
    """
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value)


def check_pattern(flag: str, value: str, pattern: re.Pattern[str], expected: str) -> str:
    """``value`` when ``pattern`` matches all of it; refused with a line naming ``flag`` otherwise.

    Args:
        flag: the option the value came from, named in the refusal.
        value: what the user gave.
        pattern: the accepted form.
        expected: the accepted form in words, for the refusal.
    """
    if not pattern.fullmatch(value):
        raise SlurmError(f"{flag} {shown(repr(value))}: expected {expected}", EXIT_USAGE)
    return value


def check_directive_path(flag: str, path: Path) -> Path:
    """``path`` when it can stand in an ``#SBATCH`` line as it is; refused otherwise.

    Args:
        flag: the option the path came from (or where it came from), named in the refusal.
        path: the absolute path.
    """
    text = str(path)
    if any(ch in DIRECTIVE_PATH_REFUSED or not ch.isprintable() for ch in text):
        raise SlurmError(
            f"{flag} {shown(repr(text))}: a path in #SBATCH lines may not hold whitespace, "
            "control characters, quotes, backslashes, '%' or '#'",
            EXIT_USAGE,
        )
    return path


def check_printable(flag: str, value: str) -> str:
    """``value`` when it holds no control characters (it is shell-quoted where it is used).

    Args:
        flag: the option the value came from, named in the refusal.
        value: a path or argument that reaches the script's shell text.
    """
    if not value.isprintable():
        raise SlurmError(
            f"{flag} {shown(repr(value))}: control characters (newlines, tabs, ...) are not "
            "allowed",
            EXIT_USAGE,
        )
    return value


@dataclass
class JobSpec:
    """Everything the sbatch template needs, after validation."""

    configs: list[str]
    """Recipe YAML files passed to ``fit --config``, in order."""
    nodes: int
    """Number of nodes (sets ``trainer.num_nodes``)."""
    tasks_per_node: int
    """Tasks per node, one per device (sets ``trainer.devices``)."""
    accelerator: str
    """``gpu`` or ``cpu``; ``--gpus-per-node`` is only requested for ``gpu``."""
    cpus_per_task: int
    """CPU cores per task (data loading workers, CPU ops)."""
    time: str
    """Wall-clock limit in SLURM's format, e.g. ``12:00:00`` or ``1-00:00:00``."""
    job_name: str
    """SLURM job name; also names the log files and the W&B run id prefix."""
    output_dir: Path
    """Directory for the rendered script and the job's stdout/stderr logs."""
    workdir: Path
    """Directory the job runs in; relative recipe paths are relative to it."""
    partition: str | None = None
    """SLURM partition; the cluster's default when None."""
    account: str | None = None
    """SLURM account to charge; the user's default when None."""
    master_addr: str | None = None
    """Rendezvous address; the first node of the allocation when None."""
    venv: Path | None = None
    """Virtual environment activated in the job; none when None."""
    extra_args: list[str] = field(default_factory=list)
    """Further arguments for ``fit``, appended after the topology arguments."""
    notes: list[str] = field(default_factory=list)
    """Recipe values the job's shape replaces; written into the script as comments."""


def resolved_recipe(paths: list[str]) -> DictConfig:
    """The recipe files merged in order, as ``fit --config a --config b`` does, as an OmegaConf
    config whose ``${...}`` interpolations resolve when read.

    Args:
        paths: YAML files, later ones overriding earlier ones.
    """
    return OmegaConf.create(load_recipes(paths))


def recipe_value(paths: list[str], merged: DictConfig, key: str) -> tuple[Any, str | None]:
    """The value of ``key`` after merging and the last file that sets it (None: unset).

    Args:
        paths: the recipe files, in merge order.
        merged: the merged recipe.
        key: a dotted key such as ``trainer.devices``.
    """
    source = None
    for path in paths:
        node: Any = read_recipe_file(path)
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            source = path
    if source is None:
        return None, None
    try:
        value = OmegaConf.select(merged, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException as error:
        first_line = str(error).strip().splitlines()[0]
        raise SlurmError(f"{source}: cannot resolve {key}: {first_line}") from None
    return value, source


SINGLE_DEVICE = ("single_device", "SingleDeviceStrategy")


def check_topology(
    paths: list[str], merged: DictConfig, nodes: int, devices: int, accelerator: str
) -> list[str]:
    """The job's shape comes from ``--nodes`` and ``--gpus-per-node``: they set the Trainer's
    ``num_nodes`` and ``devices`` (passed on the command line, after the recipes). Return one
    note per recipe value they replace; refuse what cannot work.

    Args:
        paths: the recipe files, in merge order (named in the notes and errors).
        merged: the merged recipe.
        nodes: ``--nodes``.
        devices: ``--gpus-per-node`` (tasks per node).
        accelerator: ``--accelerator``.
    """
    notes = []
    for key, flag, wanted in (
        ("trainer.num_nodes", "--nodes", nodes),
        ("trainer.devices", "--gpus-per-node", devices),
    ):
        value, source = recipe_value(paths, merged, key)
        if source is not None and _as_int(value) != wanted:
            notes.append(f"{flag} {wanted} replaces {key}: {_show(value)} from {source}")
    recipe_accelerator, source = recipe_value(paths, merged, "trainer.accelerator")
    if source is not None and recipe_accelerator not in ("auto", accelerator):
        raise SlurmError(
            f"{source} sets trainer.accelerator: {recipe_accelerator} but --accelerator is "
            f"{accelerator}; make them agree or remove the key from the recipe",
            EXIT_USAGE,
        )
    strategy, source = recipe_value(paths, merged, "trainer.strategy")
    name = strategy.get("class_path", "") if OmegaConf.is_config(strategy) else str(strategy)
    if source is not None and nodes * devices > 1 and name.endswith(SINGLE_DEVICE):
        raise SlurmError(
            f"{source} sets trainer.strategy: {name}, which runs one process, but the job has "
            f"{nodes} node(s) x {devices} task(s); use a strategy overlay from "
            "recipes/strategy/ or --nodes 1 --gpus-per-node 1",
            EXIT_USAGE,
        )
    return notes


def _as_int(value: Any) -> int | None:
    """``value`` as a positive or negative count, or None for ``auto``, lists and the like.

    Args:
        value: a Trainer ``devices`` or ``num_nodes`` value from YAML.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _show(value: Any) -> str:
    """A recipe value as the user wrote it in YAML (lists stay lists).

    Args:
        value: the value to show.
    """
    if OmegaConf.is_config(value):
        return str(OmegaConf.to_container(value))
    return str(value)


def render(spec: JobSpec, template_path: Path = DEFAULT_TEMPLATE) -> str:
    """The sbatch script for ``spec``.

    Args:
        spec: the validated job.
        template_path: the ``string.Template`` file to fill in.
    """
    if not is_file(template_path):
        raise SlurmError(f"--template {shown(str(template_path))}: file not found")
    q = shlex.quote
    optional = [f"# {shown(note)}" for note in spec.notes]
    if spec.accelerator == "gpu":
        optional.append(f"#SBATCH --gpus-per-node={spec.tasks_per_node}")
    if spec.partition:
        optional.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        optional.append(f"#SBATCH --account={spec.account}")
    if spec.venv is not None:
        venv_activate = f". {q(str(spec.venv / 'bin' / 'activate'))}"
    else:
        venv_activate = "# No virtual environment: `python` is the first one on the node's PATH."
    fit_args = [f"--config {q(path)}" for path in spec.configs]
    fit_args.append(
        f"--trainer.num_nodes {spec.nodes} --trainer.devices {spec.tasks_per_node} "
        f"--trainer.accelerator {spec.accelerator}"
    )
    if spec.extra_args:
        fit_args.append(shlex.join(spec.extra_args))
    values = {
        "job_name": spec.job_name,
        "nodes": spec.nodes,
        "tasks_per_node": spec.tasks_per_node,
        "cpus_per_task": spec.cpus_per_task,
        "time": spec.time,
        "workdir": spec.workdir,
        "output_dir": spec.output_dir,
        "optional_directives": "\n".join(optional),
        "venv_activate": venv_activate,
        "master_addr": q(spec.master_addr or ""),
        "wandb_prefix": re.sub(r"[^A-Za-z0-9_-]", "-", spec.job_name),
        "fit_args": " \\\n  ".join(fit_args),
    }
    try:
        return Template(template_path.read_text()).substitute(values)
    except (KeyError, ValueError) as error:
        raise SlurmError(f"{template_path}: bad placeholder {error}") from None


def submit(script: Path) -> str:
    """Run ``sbatch`` on ``script`` and return the job id.

    Args:
        script: the rendered job script.
    """
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found on PATH: run this on a SLURM login node "
            "(or start slurm/local-cluster.sh and export SLURM_CONF)"
        )
    result = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise SlurmError(f"sbatch failed: {message}")
    return result.stdout.strip().split(";")[0]


def _default_venv() -> Path | None:
    """The virtual environment of the running interpreter, if it runs in one."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return None


def build_parser() -> ArgumentParser:
    """The ``slurm`` tool's argument parser (subcommands ``submit`` and ``render``)."""
    parser = tool_parser(
        "slurm",
        "Render or submit an sbatch job that runs `lit_unitscale fit` on a recipe. "
        "Arguments after `--` are passed to fit.",
    )
    commands = parser.add_subcommands(required=True, dest="command")
    for name, help_text in (
        ("submit", "write the job script to --output-dir and submit it with sbatch"),
        ("render", "print the job script and submit nothing (= submit --dry-run)"),
    ):
        sub = subcommand_parser(help_text)
        _add_options(sub)
        commands.add_subcommand(name, sub, help=help_text)
    return parser


def _add_options(parser: ArgumentParser) -> None:
    """Add the job options shared by ``submit`` and ``render``.

    Args:
        parser: the subcommand's parser.
    """
    # Text options are type=str, never str | None: jsonargparse would read "null" or "~" as
    # None, and a partition or job name must reach the checks as typed.
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="YAML",
        help="recipe file passed to fit; repeat to merge several, in order",
    )
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=1,
        metavar="N",
        help="devices per node = SLURM tasks per node = trainer.devices; with "
        "--accelerator cpu the number of processes per node",
    )
    parser.add_argument(
        "--accelerator",
        type=Literal["gpu", "cpu"],
        default="gpu",
        help="gpu requests --gpus-per-node; cpu runs CPU processes, for tests",
    )
    parser.add_argument(
        "--cpus-per-task", type=int, default=4, metavar="N", help="CPU cores per task"
    )
    parser.add_argument(
        "--partition", type=str, help="SLURM partition (default: the cluster's default)"
    )
    parser.add_argument(
        "--time",
        type=str,
        default="01:00:00",
        help="wall-clock limit, e.g. 12:00:00 or 1-00:00:00; 90 s before it every rank saves "
        "last.ckpt and stops, then the job is requeued and later resumes from that checkpoint",
    )
    parser.add_argument("--account", type=str, help="SLURM account to charge (default: yours)")
    parser.add_argument(
        "--job-name", type=str, help="SLURM job name (default: the name of the last --config file)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where the job script and its logs <job-name>-<job-id>.out/.err go "
        "(default: runs/slurm/<job-name>)",
    )
    parser.add_argument(
        "--master-addr",
        type=str,
        metavar="HOST",
        help="rendezvous address; default: the first node of the allocation. Set it to "
        "127.0.0.1 when the nodes are on one host and their names do not resolve",
    )
    parser.add_argument(
        "--venv",
        type=str,
        metavar="DIR",
        help="virtual environment to activate in the job; '' for none "
        "(default: the environment running this command)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=DEFAULT_TEMPLATE,
        metavar="FILE",
        help="sbatch template with ${...} placeholders (default: lit_unitscale/tools/train.sbatch)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the job script instead of submitting it"
    )


def make_spec(args: Namespace, extra_args: list[str]) -> JobSpec:
    """Validate the options against the recipe and build the job.

    Args:
        args: the parsed options.
        extra_args: the arguments after ``--``, for fit.
    """
    if args.nodes < 1 or args.gpus_per_node < 1 or args.cpus_per_task < 1:
        raise SlurmError(
            "--nodes, --gpus-per-node and --cpus-per-task must be at least 1", EXIT_USAGE
        )
    for path in args.config:
        check_printable("--config", path)
        if not is_file(path):
            raise SlurmError(f"--config {shown(path)}: recipe not found")
    for arg in extra_args:
        check_printable("argument after --", arg)
    merged = resolved_recipe(args.config)
    notes = check_topology(args.config, merged, args.nodes, args.gpus_per_node, args.accelerator)
    if args.job_name is not None:
        job_name = check_pattern("--job-name", args.job_name, JOB_NAME, JOB_NAME_WORDS)
    else:
        job_name = Path(args.config[-1]).stem
        if not JOB_NAME.fullmatch(job_name):
            raise SlurmError(
                f"--job-name is needed: its default, the recipe file name "
                f"{shown(repr(job_name))}, is not {JOB_NAME_WORDS}",
                EXIT_USAGE,
            )
    time = check_pattern("--time", args.time, TIME, TIME_WORDS)
    if args.partition is not None:
        check_pattern("--partition", args.partition, PARTITIONS, "partition names, comma-separated")
    if args.account is not None:
        check_pattern("--account", args.account, ACCOUNT, "an account name")
    if args.master_addr:
        check_pattern("--master-addr", args.master_addr, HOST, "a host name or IP address")
    workdir = check_directive_path("the current directory (the job's --chdir)", Path.cwd())
    output_dir = (args.output_dir or Path("runs") / "slurm" / job_name).absolute()
    check_directive_path("--output-dir", output_dir)
    if args.venv is None:
        venv = _default_venv()
    else:
        venv = Path(check_printable("--venv", args.venv)).absolute() if args.venv else None
    if venv is not None and not is_file(venv / "bin" / "activate"):
        raise SlurmError(f"--venv {shown(str(venv))}: no bin/activate there")
    return JobSpec(
        configs=list(args.config),
        nodes=args.nodes,
        tasks_per_node=args.gpus_per_node,
        accelerator=args.accelerator,
        cpus_per_task=args.cpus_per_task,
        time=time,
        job_name=job_name,
        output_dir=output_dir,
        workdir=workdir,
        partition=args.partition,
        account=args.account,
        master_addr=args.master_addr,
        venv=venv,
        extra_args=extra_args,
        notes=notes,
    )


def main(argv: list[str]) -> int:
    """Entry point of ``python -m lit_unitscale slurm``; returns the exit status.

    Args:
        argv: the arguments after ``slurm``; those after ``--`` go to fit.
    """
    extra_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra_args = argv[:split], argv[split + 1 :]
    try:
        parsed = parse_arguments(build_parser(), argv, SlurmError, "slurm")
    except SlurmError as error:
        print(error, file=sys.stderr)  # already "slurm: ..., (see --help)", one line
        return error.exit_code
    args = parsed[parsed.command]
    try:
        spec = make_spec(args, extra_args)
        script = render(spec, args.template)
        if parsed.command == "render" or args.dry_run:
            sys.stdout.write(script)
            return 0
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        script_path = spec.output_dir / f"{spec.job_name}.sbatch"
        script_path.write_text(script)
        job_id = submit(script_path)
    except LitUnitscaleError as error:  # SlurmError, or a recipe that does not parse
        print(f"slurm: {shown(str(error))}", file=sys.stderr)
        return error.exit_code
    logs = spec.output_dir / f"{spec.job_name}-{job_id}"
    print(f"submitted job {job_id} ({spec.nodes} node(s) x {spec.tasks_per_node} task(s))")
    print(f"script: {script_path}")
    print(f"logs:   {logs}.out  {logs}.err")
    return 0
