"""`python -m lit_unitscale slurm render|submit`: the job script and the recipe checks.

These run anywhere (no cluster): they render scripts and check error handling.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lit_unitscale.tools import slurm

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` and return the path as a string.

    Args:
        path: the file to write.
        text: its YAML content.
    """
    path.write_text(text)
    return str(path)


@pytest.fixture
def recipe(tmp_path: Path) -> str:
    """A recipe that leaves trainer.num_nodes and trainer.devices unset."""
    return write(tmp_path / "tiny.yaml", "trainer:\n  max_steps: 3\nseed_everything: 1\n")


def render(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Render with the given arguments, assert success and return the script.

    Args:
        capsys: pytest's output capture.
        argv: arguments after ``slurm render``.
    """
    assert slurm.main(["render", *argv]) == 0
    return capsys.readouterr().out


def test_render_has_layout_signal_and_configs(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = write(tmp_path / "overlay.yaml", "trainer:\n  precision: bf16-mixed\n")
    script = render(
        capsys,
        *("--config", recipe, "--config", overlay),
        *("--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--account", "lab"),
        *("--time", "02:00:00", "--output-dir", str(tmp_path / "out")),
        *("--", "--trainer.max_steps", "10"),
    )
    assert "#SBATCH --nodes=2\n" in script
    assert "#SBATCH --ntasks-per-node=4\n" in script
    assert "#SBATCH --gpus-per-node=4\n" in script
    assert "#SBATCH --partition=gpu\n" in script
    assert "#SBATCH --account=lab\n" in script
    assert "#SBATCH --time=02:00:00\n" in script
    assert "#SBATCH --signal=B:SIGUSR1@90\n" in script
    assert "trap stop_then_requeue USR1" in script
    assert "#SBATCH --requeue\n" in script
    assert "#SBATCH --open-mode=append\n" in script
    assert f"#SBATCH --output={tmp_path / 'out'}/%x-%j.out\n" in script
    # srun gets the job's cores per task: from Slurm 22.05 it no longer inherits them, and each
    # rank would be bound to one core.
    srun = 'srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" python -m'
    assert f"{srun} lit_unitscale fit" in script
    # Configs in the order given, then the layout, then the extra arguments.
    fit = script[script.index("srun ") :]
    positions = [
        fit.index(f"--config {recipe}"),
        fit.index(f"--config {overlay}"),
        fit.index("--trainer.num_nodes 2 --trainer.devices 4 --trainer.accelerator gpu"),
        fit.index("--trainer.max_steps 10"),
    ]
    assert positions == sorted(positions)
    assert "${RESUME:+--ckpt_path last} &\n" in script  # on requeue
    assert "export WANDB_RUN_ID=overlay-$SLURM_JOB_ID" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_render_cpu_has_no_gpu_request_and_fixed_master(
    recipe: str, capsys: pytest.CaptureFixture[str]
) -> None:
    script = render(
        capsys,
        *("--config", recipe, "--nodes", "2", "--gpus-per-node", "1", "--accelerator", "cpu"),
        *("--master-addr", "127.0.0.1", "--job-name", "t", "--venv", ""),
    )
    assert "--gpus-per-node" not in script.split("set -euo")[0]
    assert "#SBATCH --ntasks-per-node=1\n" in script
    assert "--trainer.accelerator cpu" in script
    assert "MASTER_ADDR=127.0.0.1\n" in script
    assert "bin/activate" not in script


def test_submit_dry_run_equals_render(recipe: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", recipe, "--nodes", "3", "--job-name", "j", "--venv", ""]
    assert slurm.main(["submit", "--dry-run", *args]) == 0
    dry = capsys.readouterr().out
    assert dry == render(capsys, *args)


def test_recipe_layout_that_agrees_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agrees = write(tmp_path / "r.yaml", "trainer:\n  num_nodes: 2\n  devices: 8\n")
    script = render(capsys, "--config", agrees, "--nodes", "2", "--gpus-per-node", "8")
    assert "#SBATCH --ntasks-per-node=8\n" in script


@pytest.mark.parametrize(
    ("trainer", "options", "message"),
    [
        ("accelerator: cpu", [], "sets trainer.accelerator: cpu but --accelerator is gpu"),
        ("strategy: single_device", ["--nodes", "2"], "sets trainer.strategy: single_device"),
    ],
)
def test_what_cannot_work_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    trainer: str,
    options: list[str],
    message: str,
) -> None:
    base = write(tmp_path / "base.yaml", "trainer:\n  max_steps: 3\n")
    bad = write(tmp_path / "bad.yaml", f"trainer:\n  {trainer}\n")
    assert slurm.main(["render", "--config", base, "--config", bad, *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"slurm: {bad} {message}")
    assert captured.err.count("\n") == 1


STRATEGIES = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "recipes" / "strategy").glob("*.yaml")
)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("nodes", [1, 2, 4])
@pytest.mark.parametrize("gpus", [1, 8])
def test_flags_set_the_shape_for_every_strategy(
    strategy: str, nodes: int, gpus: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every strategy overlay on the README's recipe, 1/2/4 nodes: the flags set num_nodes and
    devices (after the recipes on fit's command line) and each replaced value is named."""
    recipes = ["--config", "recipes/decoder/ptb-small.yaml", "--config", strategy]
    script = render(capsys, *recipes, "--nodes", str(nodes), "--gpus-per-node", str(gpus))
    assert f"#SBATCH --nodes={nodes}\n" in script
    assert f"#SBATCH --ntasks-per-node={gpus}\n" in script
    assert f"--trainer.num_nodes {nodes} --trainer.devices {gpus}" in script
    fit = script[script.index("lit_unitscale fit") :]
    assert fit.index(strategy) < fit.index("--trainer.num_nodes")  # flags after the recipes
    merged = slurm.resolved_recipe(["recipes/decoder/ptb-small.yaml", strategy])
    for key, flag, want in (("num_nodes", "--nodes", nodes), ("devices", "--gpus-per-node", gpus)):
        value = merged.trainer.get(key)
        note = f"# {flag} {want} replaces trainer.{key}: {value} from "
        assert (note in script) == (value is not None and value != want), (key, value)


def test_readme_multi_node_command_renders_and_the_cli_takes_its_shape(tmp_path: Path) -> None:
    """The README's command as written (dry run), then the fit arguments it renders, parsed by
    the real CLI: the Trainer gets 4 nodes of 8 devices."""
    import shlex
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_unitscale",
            "slurm",
            "submit",
            "--config",
            "recipes/decoder/ptb-small.yaml",
            "--config",
            "recipes/strategy/fsdp.yaml",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--time",
            "12:00:00",
            "--dry-run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout[proc.stdout.index("lit_unitscale fit") :].splitlines()
    command = []
    for line in lines:
        command.append(line.rstrip("\\ "))
        if not line.endswith("\\"):
            break
    text = " ".join(command)
    args = shlex.split(text[: text.index("${RESUME")])[2:]  # the resume flag is for requeues
    printed = subprocess.run(
        [sys.executable, "-m", "lit_unitscale", "fit", *args, "--print_config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "\n  num_nodes: 4\n" in printed.stdout
    assert re.search(r"\n  devices: '?8'?\n", printed.stdout)  # (Trainer's devices is a Union)


def test_missing_recipe_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert slurm.main(["render", "--config", "no/such/recipe.yaml"]) == 1
    assert capsys.readouterr().err == "slurm: --config no/such/recipe.yaml: recipe not found\n"


def test_submit_without_sbatch_is_one_line(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code = slurm.main(["submit", "--config", recipe, "--output-dir", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("slurm: sbatch not found on PATH")
    assert err.count("\n") == 1
