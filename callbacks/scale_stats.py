"""Per-tensor scale statistics as one small fp32 vector, so many tensors stack into one tensor
and reduce across ranks in a single collective.

A vector holds sums and counts (never means): summed over ranks, shards of a parameter
(FSDP2/ZeRO-3) or slices of a batch (data parallel) give the statistics of the whole tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_unitscale.unit.fp8 import FORMATS, FP8Format

# Layout: sum of squares, element count, non-finite count, then (underflow, overflow) per format.
BASE_FIELDS = ("sumsq", "count", "nonfinite")


def fields(formats: Sequence[FP8Format]) -> list[str]:
    """Names of the entries of a statistics vector for ``formats``.

    Args:
        formats: FP8 formats whose range is checked.
    """
    out = list(BASE_FIELDS)
    for fmt in formats:
        out += [f"underflow_{fmt.name}", f"overflow_{fmt.name}"]
    return out


def resolve_formats(names: Sequence[str]) -> tuple[FP8Format, ...]:
    """FP8 formats by name (``"e4m3"``, ``"e5m2"``).

    Args:
        names: format names.
    """
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"unknown FP8 formats {unknown}; choose from {sorted(FORMATS)}")
    return tuple(FORMATS[n] for n in names)


def local_tensor(x: Tensor) -> Tensor:
    """This rank's part of ``x``: the local shard of a DTensor, else ``x`` itself.

    Args:
        x: a plain tensor or a DTensor (FSDP2 parameters and gradients).
    """
    to_local = getattr(x, "to_local", None)
    return to_local() if callable(to_local) else x


def tensor_stats(x: Tensor, formats: Sequence[FP8Format]) -> Tensor:
    """The statistics vector of ``x`` (see :func:`fields`), fp32 on ``x``'s device, no sync.

    Underflow counts non-zero elements below the format's smallest normal and overflow those
    above its max, as :func:`lit_unitscale.unit.fp8.out_of_range_fractions` does.

    Args:
        x: any float tensor (DTensors contribute their local shard).
        formats: FP8 formats whose range is checked.
    """
    x = local_tensor(x).detach().float()
    mag = x.abs()
    parts = [
        x.square().sum(),
        torch.full((), float(x.numel()), device=x.device),
        (~torch.isfinite(x)).sum(),
    ]
    for fmt in formats:
        parts.append(((mag > 0) & (mag < fmt.min_normal)).sum())
        parts.append((mag > fmt.max_value).sum())
    return torch.stack([p.float() for p in parts])


def summarise(stats: Tensor, formats: Sequence[FP8Format]) -> Tensor:
    """Turn reduced statistics ``(..., fields)`` into ``(..., [rms, nonfinite, fractions...])``.

    Entries with a zero count come out NaN (nothing was seen).

    Args:
        stats: summed statistics vectors, last dimension laid out as :func:`fields`.
        formats: the formats the vectors were computed with.
    """
    count = stats[..., 1]
    rms = (stats[..., 0] / count).sqrt()
    fractions = stats[..., 3:] / count[..., None]
    return torch.cat([rms[..., None], stats[..., 2:3], fractions], dim=-1)


def summary_fields(formats: Sequence[FP8Format]) -> list[str]:
    """Names of the entries :func:`summarise` returns.

    Args:
        formats: the formats the vectors were computed with.
    """
    return ["rms", "nonfinite"] + fields(formats)[3:]
