"""Which modules the scale monitor watches, found by the role models give them, never by class,
parameter name or shape.

Models tag modules with ``monitor_role`` (``embed``, ``block``, ``final_norm``, ``head``; see
:class:`lit_unitscale.unit.UnitModule`). Layers come back in forward order: the token
embedding(s), every block, each stack's final norm, the head. Parameter names and shapes change
under FSDP2/ZeRO-3 and activation-checkpoint wrappers; module attributes do not.
"""

from __future__ import annotations

from torch import nn

from lit_unitscale.unit import Embedding, LinearReadout
from lit_unitscale.unit.modules import MONITOR_ROLES


def _numbered(prefix: str, modules: list[nn.Module]) -> dict[str, nn.Module]:
    if len(modules) == 1:
        return {prefix: modules[0]}
    return {f"{prefix}{i}": m for i, m in enumerate(modules)}


def find_layers(root: nn.Module) -> dict[str, nn.Module]:
    """Monitored layers of the model under ``root``: ``embed``, ``block<i>``, ``final_norm``,
    ``head`` (numbered when a model has several embeddings or stacks).

    Args:
        root: the model, or any module containing it (e.g. a LightningModule).
    """
    by_role: dict[str, list[nn.Module]] = {role: [] for role in MONITOR_ROLES}
    seen: set[int] = set()
    for module in root.modules():
        role = getattr(module, "monitor_role", None)
        if role in by_role and id(module) not in seen:
            seen.add(id(module))
            by_role[role].append(module)
    modules = list(root.modules())
    # Models assembled from bare unit modules carry no tags: fall back on the parameter roles.
    embeds = by_role["embed"] or [m for m in modules if isinstance(m, Embedding)]
    heads = by_role["head"] or [m for m in modules if isinstance(m, LinearReadout)][-1:]
    layers = _numbered("embed", embeds)
    layers.update({f"block{i}": b for i, b in enumerate(by_role["block"])})
    layers.update(_numbered("final_norm", by_role["final_norm"]))
    if heads:
        layers["head"] = heads[-1]
    return layers
