"""Weight-gradient scales from the global token count.

Unit-scaled ops scale a weight's gradient by ``tokens**-0.5``. Under data parallelism (world
size W, gradients averaged) and gradient accumulation (k micro-batches, loss divided by k), each
process sees only ``B_local`` tokens. Scaling locally by ``B_local**-0.5 * sqrt(W * k)`` makes the
gradient the optimizer finally sees equal, in RMS, to one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

_factor: float = 1.0


def set_data_parallel(world_size: int = 1, accumulation: int = 1) -> None:
    """Declare how many processes and micro-batches share one optimizer step.

    Args:
        world_size: number of data-parallel processes whose gradients are averaged.
        accumulation: number of micro-batches accumulated per optimizer step.
    """
    global _factor
    if world_size < 1 or accumulation < 1:
        raise ValueError("world_size and accumulation must be >= 1")
    _factor = math.sqrt(world_size * accumulation)


def grad_factor() -> float:
    """The current ``sqrt(world_size * accumulation)`` correction."""
    return _factor


def weight_grad_scale(local_tokens: int) -> float:
    """Gradient scale for a parameter that sums contributions over ``local_tokens`` rows.

    Args:
        local_tokens: rows (tokens) this process contributes to the parameter's gradient.
    """
    return _factor / math.sqrt(local_tokens)


@contextlib.contextmanager
def data_parallel(world_size: int = 1, accumulation: int = 1) -> Iterator[None]:
    """Context manager form of :func:`set_data_parallel` that restores the previous value.

    Args:
        world_size: number of data-parallel processes whose gradients are averaged.
        accumulation: number of micro-batches accumulated per optimizer step.
    """
    global _factor
    previous = _factor
    set_data_parallel(world_size, accumulation)
    try:
        yield
    finally:
        _factor = previous
