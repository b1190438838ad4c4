"""Gradient clipping in unit terms.

Under u-μP every weight gradient has RMS ≈ 1 at initialisation by construction, so the global
norm of the whole gradient is ≈ sqrt(number of parameters): 1,733 at width 64, 5,704 at width 512
on the PTB decoder. A global-norm threshold of 1.0 then clips every step, by a factor that
shrinks with width, and means nothing. The ``rms`` rule bounds the RMS of the whole gradient,

    rms(g) = ||g||_2 / sqrt(N),        g <- g * min(1, threshold / rms(g)),

with N the parameter count of the clipped parameters (the global count under sharding). Unit
scaling makes rms(g) ≈ 1 at init whatever the width and depth, so one threshold means the same
thing ("gradients this many times their unit scale") for every model. It is global-norm
clipping at ``threshold * sqrt(N)``: the gradient keeps its direction, which is also why it
maps exactly onto DeepSpeed's own global-norm clipping (docs/tuning.md).

Sums of squares are taken over each process's local shards and reduced once per sharded mesh
dimension (one collective under FSDP2's 1-D mesh); replicated gradients (DDP, after its
all-reduce) need none. The scaling stays on the device: nothing here reads a tensor back to
the host.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch

ClipRule = Literal["norm", "rms"]
"""``norm``: global L2 norm (torch's clip_grad_norm_); ``rms``: RMS of the whole gradient."""

GradientClipRule = Literal["auto", "norm", "rms"]
"""A recipe's choice: ``auto`` is ``rms`` under u-μP and ``norm`` under SP."""

CLIP_RULES: tuple[str, ...] = ("norm", "rms")


def rule_for(rule: str, parametrization: str) -> ClipRule:
    """The clipping rule a recipe asks for; ``auto`` is ``rms`` under u-μP, ``norm`` under SP.

    Args:
        rule: ``auto``, ``norm`` or ``rms``.
        parametrization: ``umup`` or ``sp``.
    """
    if rule == "auto":
        return "rms" if parametrization == "umup" else "norm"
    if rule not in CLIP_RULES:
        raise ValueError(f"gradient clipping rule must be auto, norm or rms, got {rule!r}")
    return rule  # type: ignore[return-value]


def _local(grad: torch.Tensor) -> torch.Tensor:
    to_local = getattr(grad, "to_local", None)
    return to_local() if to_local is not None else grad


def _sharded_groups(grad: torch.Tensor) -> tuple:
    """The process groups over which ``grad``'s local pieces must be summed (none: replicated)."""
    placements = getattr(grad, "placements", None)
    if placements is None:
        return ()
    mesh = grad.device_mesh
    return tuple(mesh.get_group(dim) for dim, p in enumerate(placements) if p.is_shard())


def sum_of_squares(grads: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The sum of squares of all ``grads`` over every shard, and their global element count.

    Args:
        grads: gradient tensors, plain or DTensor (sharded or replicated over a device mesh).
    """
    by_groups: dict[tuple, list[torch.Tensor]] = {}
    numel = 0
    for g in grads:
        numel += g.numel()  # a DTensor's numel is the global one
        by_groups.setdefault(_sharded_groups(g), []).append(_local(g))
    total = None
    for groups, tensors in by_groups.items():
        norms = torch._foreach_norm(tensors, 2)
        part = torch.stack([n.float() for n in norms]).square().sum()
        for group in groups:
            torch.distributed.all_reduce(part, group=group)
        total = part if total is None else total + part.to(total.device)
    if total is None:
        total = torch.zeros(())
    return total, numel


def gradient_statistic(grads: list[torch.Tensor], rule: ClipRule) -> torch.Tensor:
    """The quantity ``rule`` bounds: the global L2 norm (``norm``) or the RMS (``rms``).

    Args:
        grads: gradient tensors, plain or DTensor.
        rule: ``norm`` or ``rms``.
    """
    total, numel = sum_of_squares(grads)
    if rule == "rms":
        return (total / max(numel, 1)).sqrt()
    return total.sqrt()


def clip_gradients(
    parameters: Iterable[torch.nn.Parameter], threshold: float, rule: ClipRule
) -> torch.Tensor:
    """Scale all gradients by ``min(1, threshold / statistic)`` in place; returns the statistic
    before clipping (a device tensor, never read back here).

    Args:
        parameters: parameters whose ``.grad`` is clipped together (skipped: no gradient).
        threshold: the bound: a global norm (``norm``) or an RMS in unit-scale units (``rms``).
        rule: ``norm`` or ``rms``.
    """
    if not threshold > 0 or not math.isfinite(threshold):
        raise ValueError(f"gradient clipping threshold must be a positive number, got {threshold}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    statistic = gradient_statistic(grads, rule)
    coefficient = (threshold / (statistic + 1e-6)).clamp(max=1.0)
    locals_ = [_local(g) for g in grads]
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for g in locals_:
        by_device.setdefault((g.device, g.dtype), []).append(g)
    for (device, dtype), tensors in by_device.items():
        torch._foreach_mul_(tensors, coefficient.to(device=device, dtype=dtype))
    return statistic


def numel(parameters: Iterable[torch.nn.Parameter]) -> int:
    """The global parameter count (DeepSpeed ZeRO-3 keeps it as ``ds_numel`` on partitions).

    Args:
        parameters: the parameters clipped together.
    """
    return sum(getattr(p, "ds_numel", p.numel()) for p in parameters)


def equivalent_norm(threshold: float, numel: int) -> float:
    """The global-norm threshold that clips exactly like an RMS threshold over ``numel``
    parameters: what a strategy that only clips by global norm (DeepSpeed) is given.

    Args:
        threshold: the RMS threshold.
        numel: parameters clipped together (the global count).
    """
    return threshold * math.sqrt(numel)
