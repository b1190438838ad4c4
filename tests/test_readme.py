"""Every command in the README's fenced ``bash`` blocks runs, in order, as a user would type it.

Run in a fresh working directory (recipes and the virtual environment linked into it), so each
``runs/...`` path is a temporary run directory; only the step counts are cut: ``fit`` gets
``--trainer.max_steps 2`` (a stated ``max_steps`` becomes 4, so a resume still resumes), ``test``
two batches, ``scripts/test.sh`` only collects one test file (it would otherwise run this suite
inside itself). ``dashboard push`` needs a W&B server: offline it must fail in one clean line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", command).strip()
            if command:
                commands.append(command)
    return commands


def shortened(command: str, work: Path) -> str:
    if command.startswith("bash scripts/demo.sh"):
        return f"{command} --trainer.max_steps 2 --trainer.default_root_dir {work}/runs/ptb-tiny"
    if command.startswith("bash scripts/test.sh"):
        return f"{command} --co -q tests/test_layers.py"
    if " lit_unitscale fit " in command:
        if "--trainer.max_steps" in command:
            return re.sub(r"--trainer.max_steps \d+", "--trainer.max_steps 4", command)
        return f"{command} --trainer.max_steps 2"
    if " lit_unitscale test " in command:
        return f"{command} --trainer.limit_test_batches 2"
    return command


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 15, commands
    work = tmp_path / "work"
    work.mkdir()
    for name in ("recipes", "scripts", ".venv"):
        (work / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "LIT_UNITSCALE_DEBUG": "",
    }
    env.pop("WANDB_BASE_URL", None)
    report = []
    for command in commands:
        run = shortened(command, work)
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", run], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        seconds = time.perf_counter() - start
        report.append(f"$ {run}\n-> exit {proc.returncode} in {seconds:.0f} s")
        out = proc.stdout + proc.stderr
        if " dashboard push " in command:
            assert proc.returncode != 0 and "Traceback" not in out, out[-2000:]
            assert out.strip().splitlines()[-1].startswith("dashboard: "), out[-2000:]
            continue
        assert proc.returncode == 0, "\n".join(report) + "\n" + out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    assert (work / "runs" / "ptb-tiny" / "checkpoints" / "last.ckpt").exists()
    assert (work / "runs" / "ptb-tiny-sp" / "config.yaml").exists()
    assert (work / "exported" / "ptb-small" / "config.json").exists()
    assert (work / "scales.html").exists() and (work / "my-recipe.yaml").exists()
    assert (work / "data" / "shakespeare" / "manifest.json").exists()
    assert (work / "runs" / "shakespeare" / "config.yaml").exists()
    print("\n".join(report))
