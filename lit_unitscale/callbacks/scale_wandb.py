"""Scale statistics in W&B beyond the scalar metrics, logged at each monitor step when a
WandbLogger is attached: the "scale profile" table (one row per layer and tensor with its log2
RMS and the FP8 range; the workspace panels in ``lit_unitscale.tools.dashboard`` read it under
:data:`PROFILE_KEY`) and, per layer and tensor, the histogram of ``log2 |x|`` as a
``wandb.Histogram`` under ``scales/<layer>/<tensor>/log2_hist`` (one bin per power of two, so
W&B shows its distribution over steps)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lit_unitscale.unit.fp8 import FP8Format

PROFILE_KEY = "scales/profile"
HIST_STAT = "log2_hist"
DIRECTION = {
    "act": "forward",
    "weight": "forward",
    "act_grad": "backward",
    "weight_grad": "backward",
    "update": "update",
}


def profile_columns(formats: Sequence[FP8Format]) -> list[str]:
    """Columns of the profile table.

    Args:
        formats: FP8 formats whose range is marked.
    """
    cols = ["step", "layer", "tensor", "direction", "log2_rms"]
    for fmt in formats:
        cols += [f"{fmt.name}_min_log2", f"{fmt.name}_max_log2", f"in_{fmt.name}_range"]
    return cols


def profile_rows(
    step: int, layers: dict[str, dict[str, dict[str, float]]], formats: Sequence[FP8Format]
) -> list[list[Any]]:
    """Rows of the profile table from one monitor step's values.

    Args:
        step: the optimizer step the values belong to.
        layers: ``{layer: {tensor: {"rms": ..., ...}}}`` as written to scales.jsonl.
        formats: FP8 formats whose range is marked.
    """
    rows = []
    for layer, tensors in layers.items():
        for tensor, values in tensors.items():
            rms = values["rms"]
            log2 = math.log2(rms) if rms > 0 and math.isfinite(rms) else float("nan")
            row: list[Any] = [step, layer, tensor, DIRECTION[tensor], log2]
            for fmt in formats:
                lo, hi = math.log2(fmt.min_normal), math.log2(fmt.max_value)
                row += [lo, hi, bool(lo <= log2 <= hi)]
            rows.append(row)
    return rows


def log_profile(
    loggers: Sequence[Any],
    step: int,
    layers: dict[str, dict[str, dict[str, float]]],
    formats: Sequence[FP8Format],
) -> None:
    """Log the profile table through every WandbLogger in ``loggers`` (others are skipped).

    Args:
        loggers: the trainer's loggers.
        step: the optimizer step the values belong to.
        layers: values as written to scales.jsonl.
        formats: FP8 formats whose range is marked.
    """
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    columns, rows = profile_columns(formats), profile_rows(step, layers, formats)
    for logger in wandb_loggers:
        logger.log_table(PROFILE_KEY, columns=columns, data=rows, step=step)


def histogram_metrics(layers: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``{"scales/<layer>/<tensor>/log2_hist": wandb.Histogram}`` from one monitor step's
    values; bin edges are the exponents ``min_exp .. min_exp + len(counts)``.

    Args:
        layers: values as written to scales.jsonl (each tensor's ``log2_hist`` included).
    """
    import numpy as np
    import wandb

    out = {}
    for layer, tensors in layers.items():
        for tensor, values in tensors.items():
            hist = values.get(HIST_STAT)
            if hist is None:
                continue
            counts = np.asarray(hist["counts"], dtype=np.int64)
            edges = np.arange(len(counts) + 1, dtype=np.float64) + hist["min_exp"]
            out[f"scales/{layer}/{tensor}/{HIST_STAT}"] = wandb.Histogram(
                np_histogram=(counts, edges), num_bins=len(counts)
            )
    return out


def log_histograms(
    loggers: Sequence[Any], step: int, layers: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Log the log2 histograms through every WandbLogger in ``loggers`` (others are skipped).

    Args:
        loggers: the trainer's loggers.
        step: the optimizer step the values belong to.
        layers: values as written to scales.jsonl.
    """
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    metrics = histogram_metrics(layers)
    for logger in wandb_loggers:
        logger.log_metrics(metrics, step=step)
