"""Per-tensor scale statistics as one small fp32 vector, so many tensors stack into one tensor
and reduce across ranks in a single collective.

A vector holds sums and counts (never means): summed over ranks, shards of a parameter
(FSDP2/ZeRO-3) or slices of a batch (data parallel) give the statistics of the whole tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
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
    x: Tensor, formats: Sequence[FP8Format], device: torch.device | str | None = None
) -> Tensor:
    """The statistics vector of ``x`` (see :func:`fields`), fp32 on ``device``, no sync.

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
    stats = torch.stack([p.float() for p in parts])
    if device is not None and stats.device != torch.device(device):
        stats = stats.to(device, non_blocking=True)
    return stats


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
