"""Optimizer parameter groups with u-μP learning-rate multipliers and independent weight decay.

Adam/AdamW rules (u-μP, Blake et al. 2025): hidden weights × fan_in^-0.5, embeddings ×
width^-0.5, output / bias / norm × 1, and every parameter inside a residual stack of L layers
× L^-0.5. Independent weight decay divides the decay by the parameter's peak LR so that the
decay per step does not change when the LR is swept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from torch import nn

from lit_unitscale.unit.modules import ParamSpec, named_param_specs
from lit_unitscale.unit.parametrization import Parametrization


def adam_lr_multiplier(spec: ParamSpec) -> float:
    """u-μP Adam LR multiplier for one parameter.

    Args:
        spec: the parameter's role, fan-in and depth.
    """
    mult = spec.depth**-0.5 if spec.depth else 1.0
    if spec.role in ("weight", "embedding"):
        mult *= spec.fan_in**-0.5
    return mult


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    parametrization: Parametrization = "umup",
    independent_weight_decay: bool = True,
    decay_roles: Iterable[str] = ("weight", "embedding", "output"),
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Parameter groups for torch Adam/AdamW: one group per distinct (LR, decay) pair.

    Each group carries ``lr``, ``weight_decay``, ``lr_mult`` (the u-μP multiplier) and ``names``.

    Args:
        model: model built from :mod:`lit_unitscale.unit.modules` (may be FSDP2/ZeRO-3 sharded).
        lr: base (peak) learning rate.
        weight_decay: base weight decay.
        parametrization: ``"umup"`` for u-μP multipliers, ``"sp"`` for plain groups.
        independent_weight_decay: u-μP only: make decay independent of the LR (divide by the
            group's LR, so ``weight_decay`` is the per-step decay at the peak LR); SP groups
            keep torch's coupled meaning.
        decay_roles: roles that receive weight decay; biases and norm gains are not decayed.
        trainable_only: skip parameters with ``requires_grad=False`` (frozen layers).
    """
    decay_roles = set(decay_roles)
    specs = list(named_param_specs(model))
    known = {id(p) for _, p, _ in specs}
    unknown = [n for n, p in model.named_parameters() if id(p) not in known]
    if unknown:
        raise ValueError(
            "parameters without a u-μP role (build them from lit_unitscale.unit.modules): "
            + ", ".join(unknown[:10])
        )
    buckets: dict[tuple[float, bool], dict[str, list]] = defaultdict(
        lambda: {"params": [], "names": []}
    )
    for name, param, spec in specs:
        if trainable_only and not param.requires_grad:
            continue
        mult = adam_lr_multiplier(spec) if parametrization == "umup" else 1.0
        bucket = buckets[(mult, spec.role in decay_roles)]
        bucket["params"].append(param)
        bucket["names"].append(name)
    groups = []
    for (mult, decay), bucket in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        group_lr = lr * mult
        wd = weight_decay if decay else 0.0
        if independent_weight_decay and parametrization == "umup" and wd and group_lr > 0:
            wd = wd / group_lr
        groups.append({**bucket, "lr": group_lr, "weight_decay": wd, "lr_mult": mult})
    return groups
