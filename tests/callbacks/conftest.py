import logging
from pathlib import Path

import lightning as L
import pytest


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def make_trainer(root: Path, callbacks: list, max_steps: int = 1, **kwargs) -> L.Trainer:
    """A CPU trainer with nothing extra (no checkpoints, bars or summaries)."""
    kwargs.setdefault("logger", False)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(root),
        **kwargs,
    )


@pytest.fixture
def trainer_factory(tmp_path: Path):
    def factory(callbacks: list, **kwargs) -> L.Trainer:
        return make_trainer(tmp_path, callbacks, **kwargs)

    return factory
