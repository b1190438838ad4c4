"""Build a tiny-decoder recipe with test callbacks and run it as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

RECIPE = ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml"


def recipe(run_dir: Path, max_steps: int, callbacks: list[dict[str, Any]]) -> Path:
    """The tiny recipe with ``max_steps``, extra ``callbacks``, written into ``run_dir``."""
    data = yaml.safe_load(RECIPE.read_text())
    data["trainer"]["max_steps"] = max_steps
    data["trainer"]["default_root_dir"] = str(run_dir)
    data["trainer"]["callbacks"] += callbacks
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def recorder(path: Path, sleep: float = 0.0) -> dict[str, Any]:
    return {
        "class_path": "tests.reliability.helpers.LossRecorder",
        "init_args": {"path": str(path), "sleep": sleep},
    }


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lit_unitscale", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def losses(path: Path) -> dict[int, float]:
    """Step -> loss; a step recorded twice (redone after a resume) keeps its last value."""
    out: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[record["step"]] = record["loss"]
    return out
