"""Which modules the scale monitor watches, found by type and role, never by name or shape.

Layers, in forward order: the token embedding(s), every Transformer block (``blocks()``), the
final norm of each stack, and the head. Parameter names and shapes change under FSDP2/ZeRO-3
and activation-checkpoint wrappers; module types and roles do not.
"""

from __future__ import annotations

from torch import nn

from lit_unitscale.models.stack import TransformerStack
from lit_unitscale.models.transformer import TokenEmbedding
from lit_unitscale.unit import Embedding, LinearReadout


def _numbered(prefix: str, modules: list[nn.Module]) -> dict[str, nn.Module]:
    if len(modules) == 1:
        return {prefix: modules[0]}
    return {f"{prefix}{i}": m for i, m in enumerate(modules)}


def _unique(modules: list[nn.Module]) -> list[nn.Module]:
    seen: set[int] = set()
    return [m for m in modules if not (id(m) in seen or seen.add(id(m)))]


def find_layers(root: nn.Module) -> dict[str, nn.Module]:
    """Monitored layers of the model under ``root``: ``embed``, ``block<i>``, ``final_norm``,
    ``head`` (numbered when a model has several embeddings or stacks).

    Args:
        root: the model, or any module containing it (e.g. a LightningModule).
    """
    modules = list(root.modules())
    embeds = [m for m in modules if isinstance(m, TokenEmbedding)]
    if not embeds:  # models built from bare tables
        embeds = [m for m in modules if isinstance(m, Embedding)]
    owner = next((m for m in modules if callable(getattr(m, "blocks", None))), None)
    stacks = [m for m in modules if isinstance(m, TransformerStack)]
    if owner is not None:
        blocks = list(owner.blocks())
    else:
        blocks = [layer for stack in stacks for layer in stack.layers]
    layers = _numbered("embed", _unique(embeds))
    layers.update({f"block{i}": b for i, b in enumerate(blocks)})
    layers.update(_numbered("final_norm", [s.final_norm for s in stacks]))
    head = getattr(owner, "head", None) if owner is not None else None
    if not isinstance(head, nn.Module):
        # Without a head model: the last readout (the module holding the ``output`` role).
        readouts = [m for m in modules if isinstance(m, LinearReadout)]
        head = readouts[-1] if readouts else None
    if head is not None:
        layers["head"] = head
    return layers
