from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs"


@pytest.fixture(scope="session", autouse=True)
def _tiny_runs(tmp_path_factory: pytest.TempPathFactory):
    """One thread (tiny matmuls on a shared 2-core machine run ~100x faster), a private cache
    for the tokenizers trained on the fixtures, the repository as working directory (the test
    configs name fixture paths relative to it), quiet Lightning."""
    threads = torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in ("LIT_UNITSCALE_CACHE", "WANDB_MODE")}
    cwd = os.getcwd()
    torch.set_num_threads(1)
    os.environ["LIT_UNITSCALE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["WANDB_MODE"] = "offline"
    os.chdir(REPO)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield
    os.chdir(cwd)
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def cli(subcommand: str, kind: str, root: Path, *overrides: str, ckpt: Path | None = None):
    """Run ``python -m lit_unitscale <subcommand>`` in-process on a test config; the CLI object
    (its trainer holds the logged metrics and predictions)."""
    from lit_unitscale.cli import make_cli

    args = [
        subcommand,
        "--config",
        str(CONFIGS / "trainer.yaml"),
        "--config",
        str(CONFIGS / f"{kind}.yaml"),
        "--trainer.default_root_dir",
        str(root),
        *overrides,
    ]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return make_cli(args)


def last_checkpoint(root: Path) -> Path:
    found = sorted((root / "checkpoints").glob("*.ckpt"))
    assert found, f"no checkpoint under {root}"
    return found[-1]
