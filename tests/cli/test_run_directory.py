"""One run, one directory: every artifact follows ``trainer.default_root_dir`` however it is
given, and a new ``fit`` never writes into a directory that holds another run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """The fixture decoder recipe with an absolute corpus path, run from an empty directory."""
    text = (ROOT / "tests/fixtures/recipes/decoder-tiny.yaml").read_text()
    path = tmp_path / "recipe.yaml"
    path.write_text(
        text.replace("tests/fixtures/data/text", str(ROOT / "tests/fixtures/data/text"))
    )
    return path


@pytest.mark.parametrize("form", ["space", "equals"])
def test_artifacts_follow_the_override_and_a_second_fit_is_refused(
    recipe: Path, tmp_path: Path, form: str
) -> None:
    root = tmp_path / "elsewhere" / "run1"
    override = (
        ["--trainer.default_root_dir", str(root)]
        if form == "space"
        else [f"--trainer.default_root_dir={root}"]
    )
    args = ["--config", str(recipe), *override, "--trainer.max_steps", "3"]
    printed = yaml.safe_load(run_cli("fit", *args, "--print_config", cwd=tmp_path).stdout)
    assert printed["trainer"]["logger"]["init_args"]["save_dir"] == str(root)
    (checkpoint,) = [
        c for c in printed["trainer"]["callbacks"] if "ModelCheckpoint" in c["class_path"]
    ]
    assert checkpoint["init_args"]["dirpath"] == str(root / "checkpoints")

    run_cli("fit", *args, cwd=tmp_path)
    assert (root / "checkpoints" / "last.ckpt").exists()
    assert (root / "config.yaml").exists()
    assert list((root / "wandb").glob("offline-run-*"))
    assert not (tmp_path / "runs").exists()  # the recipe's own default directory stays unused

    # The first run's wandb service may still flush its own logs; compare everything else.
    def ours() -> dict[Path, int]:
        files = (p for p in root.rglob("*") if p.is_file() and "wandb" not in p.parts)
        return {p: p.stat().st_mtime_ns for p in files}

    runs = sorted((root / "wandb").glob("offline-run-*"))
    before = ours()
    again = run_cli("fit", *args, cwd=tmp_path, check=False)
    assert again.returncode == 2
    message = [line for line in again.stderr.splitlines() if line.startswith("lit_unitscale:")]
    assert len(message) == 1 and "already holds a run" in message[0], again.stderr[-2000:]
    assert "--ckpt_path last" in message[0] and f"{root}-2" in message[0]
    assert ours() == before  # nothing written, nothing mixed in
    assert sorted((root / "wandb").glob("offline-run-*")) == runs  # no second W&B run

    run_cli("fit", *args[:-1], "5", "--ckpt_path", "last", cwd=tmp_path)  # resume is allowed
    assert not list((root / "checkpoints").glob("last-v*.ckpt"))
