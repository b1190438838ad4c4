"""Scale constraints: how an op reconciles its forward scale with its input-gradient scales.

A constraint makes scales that must be equal (e.g. to keep a linear layer's gradient an exact
transpose of its forward) equal, by choosing one value for all of them.
"""

from __future__ import annotations

import math
from typing import Literal

Constraint = Literal["to_output_scale", "gmean", "none"] | None

CONSTRAINTS = ("to_output_scale", "gmean", "none")


def apply_constraint(constraint: Constraint, *scales: float) -> tuple[float, ...]:
    """Return ``scales`` made consistent under ``constraint``.

    Args:
        constraint: ``"to_output_scale"`` (all take the first, the output scale), ``"gmean"``
            (all take the geometric mean) or ``None``/``"none"`` (scales left independent).
        scales: the output scale followed by each input-gradient scale.
    """
    if constraint is None or constraint == "none":
        return scales
    if constraint == "to_output_scale":
        chosen = scales[0]
    elif constraint == "gmean":
        chosen = math.prod(scales) ** (1 / len(scales))
    else:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")
    return tuple(chosen for _ in scales)
