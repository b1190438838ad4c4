"""Learning-rate schedules: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine", "linear", "constant"]


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: Schedule, min_lr_ratio: float
) -> float:
    """Multiplier on the peak LR at ``step``.

    Args:
        step: optimizer step (0-based).
        total_steps: steps in the whole run.
        warmup_steps: steps of linear warmup from ~0 to the peak.
        schedule: decay after warmup.
        min_lr_ratio: final LR as a fraction of the peak.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape
