"""The quiet, single-device Trainer that tools use for short measurement runs."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def short_trainer(
    max_steps: int,
    callbacks: Sequence[Any] = (),
    val_batches: int = 0,
    root: str | Path | None = None,
    **kwargs: Any,
):
    """A Trainer for a few steps: no logger, checkpoints, progress bar or summary.

    Args:
        max_steps: optimizer steps.
        callbacks: callbacks to attach.
        val_batches: validation batches, run once at the end (0: no validation).
        root: the run directory, for what tasks write there (an MLM task copies its tokenizer);
            default: a new temporary directory, never the working directory.
        kwargs: further Trainer arguments.
    """
    import lightning as L

    if root is None:
        root = tempfile.mkdtemp(prefix="lit_unitscale-short-")

    if val_batches:
        kwargs.setdefault("val_check_interval", max_steps)
        kwargs.setdefault("check_val_every_n_epoch", None)
    return L.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=val_batches,
        callbacks=list(callbacks),
        default_root_dir=str(root),
        **kwargs,
    )
