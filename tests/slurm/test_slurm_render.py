"""`python -m lit_unitscale slurm render|submit`: the job script and the recipe checks.

These run anywhere (no cluster): they render scripts and check error handling.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lit_unitscale.tools import slurm


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
    assert "trap requeue USR1" in script
    assert "#SBATCH --requeue\n" in script
    assert "#SBATCH --open-mode=append\n" in script
    assert f"#SBATCH --output={tmp_path / 'out'}/%x-%j.out\n" in script
    assert "srun --kill-on-bad-exit=1 python -m lit_unitscale fit" in script
    # Configs in the order given, then the layout, then the extra arguments.
    fit = script[script.index("srun ") :]
    positions = [
        fit.index(f"--config {recipe}"),
        fit.index(f"--config {overlay}"),
        fit.index("--trainer.num_nodes 2 --trainer.devices 4 --trainer.accelerator gpu"),
        fit.index("--trainer.max_steps 10"),
    ]
    assert positions == sorted(positions)
    assert "--ckpt_path last" in script  # on requeue
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
        ("devices: 4", ["--gpus-per-node", "8"], "sets trainer.devices: 4 but --gpus-per-node"),
        ("num_nodes: 1", ["--nodes", "2"], "sets trainer.num_nodes: 1 but --nodes is 2"),
        ("devices: auto", [], "sets trainer.devices: auto, which SLURM cannot match"),
        ("devices: -1", [], "sets trainer.devices: -1, which SLURM cannot match"),
        ("devices: [0, 1]", [], "sets trainer.devices: [0, 1], which SLURM cannot match"),
        ("accelerator: cpu", [], "sets trainer.accelerator: cpu but --accelerator is gpu"),
    ],
)
def test_layout_mismatch_is_one_line_exit_2(
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


def test_later_config_overrides_the_earlier_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = write(tmp_path / "a.yaml", "trainer:\n  devices: 4\n")
    right = write(tmp_path / "b.yaml", "trainer:\n  devices: 2\n")
    render(capsys, "--config", wrong, "--config", right, "--gpus-per-node", "2")


def test_missing_recipe_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert slurm.main(["render", "--config", "no/such/recipe.yaml"]) == 1
    assert capsys.readouterr().err == "slurm: recipe not found: no/such/recipe.yaml\n"


def test_submit_without_sbatch_is_one_line(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code = slurm.main(["submit", "--config", recipe, "--output-dir", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("slurm: sbatch not found on PATH")
    assert err.count("\n") == 1
