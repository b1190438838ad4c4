"""FP8 simulation: quantise tensors to E4M3 / E5M2 values while keeping their dtype.

Formats match torch's float8 dtypes (E4M3 = ``float8_e4m3fn``, max 448, no infinities;
E5M2 = ``float8_e5m2``, max 57344). Round-to-nearest-even comes from the dtype cast itself;
stochastic rounding adds uniform noise below the format's last mantissa bit before truncating.
Inputs of any float dtype are quantised through fp32, which holds every fp16/bf16 value exactly,
so bf16 and fp16 tensors come back correct (every FP8 value is representable in both).

Unit scaling is what makes this usable without per-tensor scale factors: at unit RMS a tensor
sits in the middle of both formats' ranges.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FP8Format:
    """A floating-point format with ``exponent_bits`` and ``mantissa_bits``."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    max_value: float
    dtype: torch.dtype

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value."""
        bias = 2 ** (self.exponent_bits - 1) - 1
        return 2.0 ** (1 - bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive (subnormal) value."""
        return self.min_normal * 2.0**-self.mantissa_bits


E4M3 = FP8Format("e4m3", 4, 3, 448.0, torch.float8_e4m3fn)
E5M2 = FP8Format("e5m2", 5, 2, 57344.0, torch.float8_e5m2)
FORMATS = {"e4m3": E4M3, "e5m2": E5M2}


def quantise(
    x: Tensor,
    fmt: FP8Format = E4M3,
    rounding: str = "nearest",
    saturate: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Round ``x`` to the nearest value representable in ``fmt``; returns ``x``'s dtype.

    Args:
        x: tensor of any float dtype.
        fmt: target format, :data:`E4M3` or :data:`E5M2`.
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"``.
        saturate: clamp to ±max instead of overflowing (E5M2 overflows to inf otherwise;
            E4M3 has no inf and always saturates).
        generator: random generator for stochastic rounding.
    """
    x32 = x.float()
    if rounding == "stochastic":
        x32 = _stochastic_round(x32, fmt, generator)
    elif rounding != "nearest":
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if saturate or fmt is E4M3:
        x32 = x32.clamp(-fmt.max_value, fmt.max_value)
    return x32.to(fmt.dtype).to(x.dtype)


def _stochastic_round(x: Tensor, fmt: FP8Format, generator: torch.Generator | None) -> Tensor:
    # Spacing of representable values at |x|: 2**(exponent - mantissa_bits), with the exponent
    # floored at the subnormal range. The exponent comes from frexp (exact), not log2, whose
    # rounding puts values a few ulps below a power of two into the next binade. Rounding up
    # with probability equal to the fractional distance from the lower neighbour is unbiased and
    # only ever returns one of the two neighbours; values already on the grid stay exact.
    mag = x.abs()
    _, exp = torch.frexp(mag)
    exponent = torch.clamp_min(exp - 1, math.frexp(fmt.min_normal)[1] - 1)
    spacing = torch.exp2((exponent - fmt.mantissa_bits).to(x.dtype))
    scaled = mag / spacing  # exact: division by a power of two
    lower = torch.floor(scaled)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    rounded = (lower + (noise < scaled - lower).to(x.dtype)) * spacing
    # The result is on the format's grid, so the final cast (round-to-nearest) does not move
    # it; inf and NaN pass through unchanged.
    return torch.where(torch.isfinite(x), torch.copysign(rounded, x), x)


class _QuantiseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, fmt_name: str) -> Tensor:  # type: ignore[override]
        ctx.fmt_name = fmt_name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return quantise(grad, FORMATS[ctx.fmt_name]), None


def quantise_grad(x: Tensor, fmt: FP8Format = E5M2) -> Tensor:
    """Identity going forward; quantises the gradient to ``fmt`` going backward.

    Args:
        x: tensor whose incoming gradient is quantised.
        fmt: gradient format (E5M2 by default).
    """
    return _QuantiseGrad.apply(x, fmt.name)


class _QuantiseSTE(torch.autograd.Function):
    # Straight-through: the forward value is quantised, the gradient passes unchanged (the
    # gradient of rounding is zero almost everywhere, which would stop training).
    @staticmethod
    def forward(ctx, x: Tensor, fmt_name: str) -> Tensor:  # type: ignore[override]
        return quantise(x, FORMATS[fmt_name])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def quantise_value(x: Tensor, fmt: FP8Format = E4M3) -> Tensor:
    """Quantises the value going forward; the gradient passes straight through.

    Args:
        x: tensor to quantise.
        fmt: value format (E4M3 by default).
    """
    return _QuantiseSTE.apply(x, fmt.name)


_matmul_fp8: bool = False


@contextlib.contextmanager
def fp8_matmuls(enabled: bool = True) -> Iterator[None]:
    """Within this context every unit matmul quantises its inputs to E4M3 (forward) and its
    output gradient to E5M2 (backward).

    Args:
        enabled: turn the simulation on (or off, to exclude a region).
    """
    global _matmul_fp8
    previous, _matmul_fp8 = _matmul_fp8, enabled
    try:
        yield
    finally:
        _matmul_fp8 = previous


def fp8_enabled() -> bool:
    """Whether matmuls are currently simulated in FP8 by :func:`fp8_matmuls`."""
    return _matmul_fp8


SIMULATED = "fp8-sim"
"""The matmul format of a module whose matmuls are simulated in FP8 (set by the FP8
simulation's precision plugin, as real FP8 is: :func:`lit_unitscale.unit.use_fp8_matmuls`)."""


def simulating(matmul: str | None = None) -> bool:
    """Whether an op of a module with matmul format ``matmul`` is simulated in FP8: its module
    says so, or the whole region runs inside :func:`fp8_matmuls`.

    Args:
        matmul: the module's matmul format (None, ``"fp8"`` or ``"fp8-sim"``).
    """
    return _matmul_fp8 or matmul == SIMULATED


def matmul_inputs(*tensors: Tensor, simulate: bool | None = None) -> tuple[Tensor, ...]:
    """Quantise matmul operands to E4M3 when FP8 is simulated; otherwise return them.

    Args:
        tensors: the operands.
        simulate: whether to (None: inside :func:`fp8_matmuls`).
    """
    if not (_matmul_fp8 if simulate is None else simulate):
        return tensors
    return tuple(quantise_value(t, E4M3) for t in tensors)


def matmul_output(x: Tensor, simulate: bool | None = None) -> Tensor:
    """Mark a matmul output so its gradient is quantised to E5M2 when FP8 is simulated.

    Args:
        x: the matmul's output.
        simulate: whether to (None: inside :func:`fp8_matmuls`).
    """
    return quantise_grad(x, E5M2) if (_matmul_fp8 if simulate is None else simulate) else x


def out_of_range_fractions(x: Tensor, fmt: FP8Format) -> tuple[Tensor, Tensor]:
    """Fractions of non-zero elements below ``fmt``'s smallest normal and above its max.

    Args:
        x: tensor to inspect.
        fmt: format whose range is checked.
    """
    mag = x.detach().float().abs()
    n = mag.numel()
    under = ((mag > 0) & (mag < fmt.min_normal)).sum() / n
    over = (mag > fmt.max_value).sum() / n
    return under, over
