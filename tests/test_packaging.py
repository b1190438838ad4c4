"""The package installs like a package: a wheel built from this tree, installed into a fresh
virtual environment outside it, runs from another directory (fit, slurm render, export) and
imports every module it ships. Dependencies come from the test's own environment (added to the
fresh one's path by a .pth file, whose directory's own .pth files Python does not process, so
the editable install of this tree stays invisible)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_tree(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        str(ROOT),
        "-w",
        str(dist),
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("lit_unitscale-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    ).strip()
    (Path(site) / "outer-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        str(wheel),
        cwd=tmp_path,
    )

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "tests" / "fixtures" / "data" / "text", elsewhere / "text")
    recipe = (ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml").read_text()
    (elsewhere / "recipe.yaml").write_text(recipe.replace("tests/fixtures/data/text", "text"))
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "WANDB_MODE": "offline",
        "PYTHONPATH": "",
    }
    where = _run("lit-unitscale", "--help", cwd=elsewhere, env=env)
    assert "tool subcommands" in where
    located = _run(
        str(python),
        "-c",
        "import lit_unitscale; print(lit_unitscale.__file__)",
        cwd=elsewhere,
        env=env,
    )
    assert located.startswith(str(venv)), located
    _run(
        "lit-unitscale",
        "fit",
        "--config",
        "recipe.yaml",
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        "run",
        cwd=elsewhere,
        env=env,
    )
    assert (elsewhere / "run" / "checkpoints" / "last.ckpt").exists()
    script = _run(
        "lit-unitscale",
        "slurm",
        "render",
        "--config",
        "recipe.yaml",
        "--nodes",
        "2",
        "--accelerator",
        "cpu",
        cwd=elsewhere,
        env=env,
    )
    assert "#SBATCH --nodes=2" in script and "srun" in script
    _run("lit-unitscale", "export", "run/checkpoints/last.ckpt", "exported", cwd=elsewhere, env=env)
    assert (elsewhere / "exported" / "config.json").exists()
    imported = _run(
        str(python),
        "-c",
        "import importlib, pkgutil, lit_unitscale\n"
        "found = pkgutil.walk_packages(lit_unitscale.__path__, 'lit_unitscale.')\n"
        "names = [m.name for m in found]\n"
        "[importlib.import_module(n) for n in names if not n.endswith('__main__')]\n"
        "print(len(names), sorted({n.split('.')[1] for n in names if n.count('.') > 1}))",
        cwd=elsewhere,
        env=env,
    )
    count, packages = imported.split(" ", 1)
    assert int(count) > 60, imported
    for sub in ("callbacks", "data", "metrics", "models", "strategies", "tasks", "tools", "unit"):
        assert sub in packages, imported
