"""Per-tensor scale statistics as one small fp64 vector, so many tensors stack into one tensor
and reduce across ranks in a single collective.

A vector holds sums and counts (never means): summed over ranks, shards of a parameter
(FSDP2/ZeRO-3) or slices of a batch (data parallel) give the statistics of the whole tensor.

Every count of a tensor but two comes from one histogram of its fp32 bit patterns: the
biased exponent field of ``|x|`` is counted once (256 values), and non-finite elements
(exponent 255), subnormals, underflow below each format's smallest normal (a power of two, so
a sum of exponent bins) and the ``log2 |x|`` histogram are read off it; only the sum of
squares, the zero count and one comparison per format's max (not a power of two) read the
elements again.

The ``log2 |x|`` histogram has :data:`HIST_BINS` bins: bin ``i`` counts the non-zero finite
elements with ``floor(log2 |x|) == HIST_MIN_EXP + i`` (``torch.frexp``'s exponent minus 1),
with everything below ``2**HIST_MIN_EXP`` (fp32 subnormals included) clamped into the first
bin and everything at or above ``2**HIST_MAX_EXP`` into the last. The range is fixed, so the
histograms of all tensors, steps and ranks add elementwise. Statistics read the stored bits,
so an fp32 subnormal counts as non-zero even where the CPU treats subnormal inputs as zero.

Tensors larger than ``max_elements`` are sampled: the flat tensor is cut into blocks of
``stride = ceil(n / max_elements)`` elements and one element of each block is drawn uniformly
(seeded generator), the leftover tail is taken whole; each drawn element stands for its block
(weight ``stride``). Every element is then included with probability exactly ``1/stride``, so
sums and counts are unbiased and stay integers, and the element count is exact. The cost is
sampling error: for ``m`` drawn elements, the relative standard error of the RMS is about
``sd(x**2) / (2 * mean(x**2) * sqrt(m))`` (0.7/sqrt(m) for Gaussian values: 0.14 % at
``m = 2**18``) and that of a share ``p`` about ``sqrt((1 - p) / (p * m))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from lit_unitscale.errors import RecipeError
from lit_unitscale.unit.fp8 import FORMATS, FP8Format

# fp16 is checked alongside the FP8 formats: without a loss scale its range is the one that bites.
FP16 = FP8Format("fp16", 5, 10, 65504.0, torch.float16)
RANGE_FORMATS = {**FORMATS, "fp16": FP16}

# Layout: sum of squares, element count, non-finite count, then (underflow, overflow) per format,
# then the zero count and the log2 |x| histogram.
BASE_FIELDS = ("sumsq", "count", "nonfinite")
HIST_MIN_EXP = -40  # clamped below: smaller magnitudes land in the first bin
HIST_MAX_EXP = 20  # clamped above: larger magnitudes land in the last bin
HIST_BINS = HIST_MAX_EXP - HIST_MIN_EXP + 1
_FP32_BIAS = 127
_SIGN_OFF = 0x7FFFFFFF


def fields(formats: Sequence[FP8Format]) -> list[str]:
    """Names of the entries of a statistics vector for ``formats``.

    Args:
        formats: FP8 formats whose range is checked.
    """
    out = list(BASE_FIELDS)
    for fmt in formats:
        out += [f"underflow_{fmt.name}", f"overflow_{fmt.name}"]
    return out + ["zeros"] + [f"log2_{HIST_MIN_EXP + i}" for i in range(HIST_BINS)]


def width(formats: Sequence[FP8Format]) -> int:
    """Length of a statistics vector for ``formats``.

    Args:
        formats: FP8 formats whose range is checked.
    """
    return len(BASE_FIELDS) + 2 * len(formats) + 1 + HIST_BINS


def histogram(stats: Tensor, formats: Sequence[FP8Format]) -> tuple[Tensor, Tensor]:
    """The zero count ``(...)`` and the log2 histogram ``(..., HIST_BINS)`` of statistics
    vectors ``(..., fields)``.

    Args:
        stats: statistics vectors, last dimension laid out as :func:`fields`.
        formats: the formats the vectors were computed with.
    """
    start = len(BASE_FIELDS) + 2 * len(formats)
    return stats[..., start], stats[..., start + 1 :]


def resolve_formats(names: Sequence[str]) -> tuple[FP8Format, ...]:
    """Formats by name (``"e4m3"``, ``"e5m2"``, ``"fp16"``).

    Args:
        names: format names.
    """
    unknown = [n for n in names if n not in RANGE_FORMATS]
    if unknown:
        raise RecipeError(f"unknown formats {unknown}; choose from {sorted(RANGE_FORMATS)}")
    return tuple(RANGE_FORMATS[n] for n in names)


def local_tensor(x: Tensor) -> Tensor:
    """This rank's part of ``x``: the local shard of a DTensor (FSDP2), the local partition of
    a DeepSpeed ZeRO-3 parameter (its padding dropped), else ``x`` itself.

    Args:
        x: a plain tensor, a DTensor or a ZeRO-3 partitioned parameter.
    """
    to_local = getattr(x, "to_local", None)
    if callable(to_local):
        return to_local()
    if hasattr(x, "ds_tensor"):
        return _unpadded(x.ds_tensor, x)
    return x


def local_grad(param: Tensor) -> Tensor | None:
    """This rank's part of ``param``'s gradient: ``param.grad`` (its local shard under FSDP2),
    or under DeepSpeed, where ``grad`` is empty, the rank's partition of the reduced gradient
    (ZeRO-3) or its fragment of it (ZeRO-1/2; empty when the rank holds none of the parameter).

    Args:
        param: a parameter, with gradients ready (before the optimizer step).
    """
    if param.grad is not None:
        return param.grad
    if getattr(param, "_z3_optimizer", None) is not None:
        from deepspeed.utils import safe_get_local_grad

        grad = safe_get_local_grad(param)
        return None if grad is None else _unpadded(grad, param)
    if hasattr(param, "_hp_mapping"):
        mapping = param._hp_mapping
        if mapping is None:
            return param.new_zeros(0)
        grad = mapping.get_lp_grad_fragment(param._index_in_param_group).reshape(-1)
        address = mapping.lp_fragment_address
        if grad.numel() == param.numel():  # a full buffer per rank: keep the owned fragment
            grad = grad.narrow(0, address.start, address.numel)
        return grad
    return None


def _unpadded(partition: Tensor, param: Tensor) -> Tensor:
    # ZeRO-3 gives every rank an equal partition; the last ones are padded with zeros, which
    # must not count as elements.
    size = partition.numel()
    rank = dist.get_rank(group=param.ds_process_group) if dist.is_initialized() else 0
    valid = max(0, min(size, param.ds_numel - rank * size))
    return partition.reshape(-1)[:valid]


def tensor_stats(
    x: Tensor,
    formats: Sequence[FP8Format],
    device: torch.device | str | None = None,
    max_elements: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The statistics vector of ``x`` (see :func:`fields`), fp64 on ``device``, no sync.

    The statistics are computed where ``x``'s local part lives and the small vector is then
    moved to ``device``: under ZeRO-3 with offload a parameter's partition sits in (pinned)
    host memory while activations and gradients are on the GPU, and the vectors of both must
    meet on the device of the collective that sums them.

    Underflow counts non-zero elements below the format's smallest normal and overflow those
    above its max, as :func:`lit_unitscale.unit.fp8.out_of_range_fractions` does.

    Args:
        x: any float tensor (DTensors contribute their local shard, ZeRO-3 parameters their
            partition).
        formats: FP8 formats whose range is checked.
        device: where the vector goes (None: stays on the device of ``x``'s local part).
        max_elements: sample tensors with more elements than this (see the module docstring);
            None: every element, exact.
        generator: random source of the sample, on the device of ``x``'s local part (None: a
            fresh one seeded with 0); kept apart from the global one so that monitoring does
            not change what training draws.
    """
    flat = local_tensor(x).detach().reshape(-1)
    n = flat.numel()
    if max_elements is None or n <= max_elements:
        stats = _exact_stats(flat, formats)
    else:
        stride = -(-n // max_elements)
        blocks = n // stride
        if generator is None:
            generator = torch.Generator(device=flat.device).manual_seed(0)
        offsets = torch.randint(0, stride, (blocks,), generator=generator, device=flat.device)
        drawn = torch.arange(0, blocks * stride, stride, device=flat.device) + offsets
        stats = _exact_stats(flat[drawn], formats) * stride
        stats = stats + _exact_stats(flat[blocks * stride :], formats)
    if device is not None and stats.device != torch.device(device):
        stats = stats.to(device, non_blocking=True)
    return stats


def _exact_stats(flat: Tensor, formats: Sequence[FP8Format]) -> Tensor:
    v = flat.float().contiguous()
    mag_bits = v.view(torch.int32) & _SIGN_OFF
    # Histogram of the biased exponent of |x|; a fixed-size index_add (unlike bincount) has
    # no data-dependent shape, so it never waits on the device.
    ones = torch.ones((), dtype=torch.int64, device=v.device).expand(v.numel())
    exps = torch.zeros(256, dtype=torch.int64, device=v.device)
    exps = exps.index_add_(0, mag_bits >> 23, ones).double()
    zeros = v.numel() - torch.count_nonzero(mag_bits).double()
    subnormal = exps[0] - zeros
    parts = [
        v.square().sum().double().reshape(1),  # pairwise sum: dot's error is ~5e-6
        torch.full((1,), float(v.numel()), dtype=torch.float64, device=v.device),
        exps[255:],
    ]
    mag = mag_bits.view(torch.float32)  # |x| without a pass of its own
    for fmt in formats:
        normal = _FP32_BIAS + round(math.log2(fmt.min_normal))
        parts.append((subnormal + exps[1:normal].sum()).reshape(1))
        parts.append(torch.count_nonzero(mag > fmt.max_value).double().reshape(1))
    low, high = _FP32_BIAS + HIST_MIN_EXP, _FP32_BIAS + HIST_MAX_EXP
    parts += [
        zeros.reshape(1),
        (subnormal + exps[1 : low + 1].sum()).reshape(1),
        exps[low + 1 : high],
        exps[high:255].sum().reshape(1),
    ]
    return torch.cat(parts)


def summarise(stats: Tensor, formats: Sequence[FP8Format]) -> Tensor:
    """Turn reduced statistics ``(..., fields)`` into ``(..., [rms, nonfinite, fractions...])``.

    Entries with a zero count come out NaN (nothing was seen).

    Args:
        stats: summed statistics vectors, last dimension laid out as :func:`fields`.
        formats: the formats the vectors were computed with.
    """
    count = stats[..., 1]
    rms = (stats[..., 0] / count).sqrt()
    fractions = stats[..., 3 : 3 + 2 * len(formats)] / count[..., None]
    return torch.cat([rms[..., None], stats[..., 2:3], fractions], dim=-1)


def summary_fields(formats: Sequence[FP8Format]) -> list[str]:
    """Names of the entries :func:`summarise` returns.

    Args:
        formats: the formats the vectors were computed with.
    """
    return ["rms", "nonfinite"] + fields(formats)[3 : 3 + 2 * len(formats)]
