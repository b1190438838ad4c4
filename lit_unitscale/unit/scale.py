"""Scale primitives: multiply a tensor by one factor going forward and another going backward."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

_true_gradients = False


class _Scale(torch.autograd.Function):
    """Forward ``x * fwd``, backward ``grad * bwd``; both Python floats (compile-time constants)."""

    @staticmethod
    def forward(ctx, x: Tensor, fwd: float, bwd: float) -> Tensor:  # type: ignore[override]
        ctx.bwd = bwd
        return x * fwd if fwd != 1.0 else x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return (grad * ctx.bwd if ctx.bwd != 1.0 else grad), None, None


def scale(x: Tensor, fwd: float = 1.0, bwd: float = 1.0) -> Tensor:
    """Scale ``x`` by ``fwd`` in the forward pass and its gradient by ``bwd`` in the backward pass.

    Args:
        x: the tensor to scale.
        fwd: factor applied to the value.
        bwd: factor applied to the gradient flowing back into ``x``.
    """
    if _true_gradients:
        return x * fwd if fwd != 1.0 else x
    if fwd == 1.0 and bwd == 1.0:
        return x
    return _Scale.apply(x, float(fwd), float(bwd))


def true_gradients_enabled() -> bool:
    """Whether :func:`true_gradients` is in force."""
    return _true_gradients


@contextlib.contextmanager
def true_gradients() -> Iterator[None]:
    """Within this context every scale is a plain multiplication, so autograd computes the true
    gradient of the same forward function. Unit scaling's contract is that each parameter's
    scaled gradient is parallel to this one; tests use it as the oracle."""
    global _true_gradients
    previous, _true_gradients = _true_gradients, True
    try:
        yield
    finally:
        _true_gradients = previous


def scale_fwd(x: Tensor, scale_: float) -> Tensor:
    """Scale the value only; the gradient passes through unchanged.

    Args:
        x: the tensor to scale.
        scale_: factor applied to the value.
    """
    return scale(x, fwd=scale_)


def scale_bwd(x: Tensor, scale_: float) -> Tensor:
    """Scale the gradient only; the value passes through unchanged.

    Args:
        x: the tensor whose gradient is scaled.
        scale_: factor applied to the gradient.
    """
    return scale(x, bwd=scale_)


def log_interpolate(alpha: float, lower: float, upper: float) -> float:
    """Geometric interpolation: ``lower`` at alpha=0, ``upper`` at alpha=1.

    Args:
        alpha: interpolation weight in [0, 1].
        lower: value at alpha=0 (> 0).
        upper: value at alpha=1 (> 0).
    """
    return math.exp(alpha * math.log(upper) + (1 - alpha) * math.log(lower))
