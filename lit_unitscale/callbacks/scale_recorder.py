"""Hooks that record scale statistics of each monitored layer, with no Lightning in sight
(the coord-check tool uses it on a bare model).

Forward hooks on each layer take the statistics of its output and, when the output needs a
gradient, put a tensor hook on it for the activation gradient. Weights, weight gradients and
updates are read from the parameters that carry u-μP roles. While inactive the hooks return at
once, so training between monitor steps pays only a Python function call per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_unitscale.callbacks.scale_layers import find_layers
from lit_unitscale.callbacks.scale_stats import local_grad, local_tensor, tensor_stats, width
from lit_unitscale.unit import named_param_specs
from lit_unitscale.unit.fp8 import FP8Format

TENSORS = ("act", "act_grad", "weight", "weight_grad", "update")
# Order in which the tensors of one step come into being, for "which went non-finite first".
EVENT_ORDER = ("weight", "act", "act_grad", "weight_grad", "update")

Key = tuple[str, str]  # (layer, tensor)


def _first_tensor(output) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


class ScaleRecorder:
    """Accumulates statistics vectors per (layer, tensor) while ``active``.

    Args:
        root: module containing the model (layers are found by :func:`find_layers`).
        formats: FP8 formats whose range is checked.
        tensors: which tensor kinds to record (subset of :data:`TENSORS`).
        device: where every statistics vector is kept, stacked and reduced: the device of
            the collective (the module's compute device). None: the device of the tensors,
            which must then all share one.
        max_elements: sample tensors with more elements than this (one element drawn per
            block, unbiased; see :mod:`lit_unitscale.callbacks.scale_stats`); None: exact.
        seed: seed of the sampling generators (one per device, apart from the global one).
    """

    def __init__(
        self,
        root: nn.Module,
        formats: Sequence[FP8Format],
        tensors: Iterable[str] = TENSORS,
        device: torch.device | str | None = None,
        max_elements: int | None = None,
        seed: int = 0,
    ) -> None:
        self.formats = tuple(formats)
        self.max_elements = max_elements
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.device = None if device is None else torch.device(device)
        self.tensors = tuple(t for t in TENSORS if t in set(tensors))
        self.layers = find_layers(root)
        if not self.layers:
            raise ValueError("no monitored layers found (no embedding, blocks, norm or head)")
        self.active = False
        self.stats: dict[Key, Tensor] = {}
        self.events: list[Key] = []  # first occurrence of each key, in the order it happened
        self._handles: list = []
        self._snapshot: dict[int, Tensor] = {}

    # -- hooks --------------------------------------------------------------------------
    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def detach(self) -> None:
        """Remove every hook this recorder registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._snapshot.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _forward_hook(self, layer: str):
        def hook(module: nn.Module, args, output) -> None:
            if not self.active:
                return
            out = _first_tensor(output)
            if out is None:
                return
            if "act" in self.tensors:
                self.add((layer, "act"), out)
            if "act_grad" in self.tensors and out.requires_grad:
                out.register_hook(self._grad_hook(layer))

        return hook

    def _grad_hook(self, layer: str):
        def hook(grad: Tensor) -> None:
            if self.active:
                self.add((layer, "act_grad"), grad)

        return hook

    # -- recording ----------------------------------------------------------------------
    def add(self, key: Key, x: Tensor) -> None:
        """Add the statistics of ``x`` to ``key`` (sums accumulate over micro-batches)."""
        s = self._stats(x)
        if key in self.stats:
            self.stats[key] = self.stats[key] + s
        else:
            self.stats[key] = s
            self.events.append(key)

    def _stats(self, x: Tensor) -> Tensor:
        local = local_tensor(x)
        if self.max_elements is None or local.numel() <= self.max_elements:
            return tensor_stats(local, self.formats, self.device)
        gen = self._generators.get(local.device)
        if gen is None:
            gen = torch.Generator(device=local.device).manual_seed(self.seed)
            self._generators[local.device] = gen
        return tensor_stats(local, self.formats, self.device, self.max_elements, gen)

    def _params(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for _, p, _ in named_param_specs(module)]

    def _mine(self, params: list[nn.Parameter], of_grad: bool = False) -> list[nn.Parameter]:
        # A tensor every rank holds whole (DDP's weights and reduced gradients, ZeRO-1/2's
        # weights) counts once, on rank 0, so that summed counts are those of one copy;
        # shards and partitions count on the rank that holds them.
        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            return params
        if of_grad:
            return [p for p in params if p.grad is None or local_tensor(p.grad) is not p.grad]
        return [p for p in params if local_tensor(p) is not p]

    def record_params(self) -> None:
        """Weights and weight gradients of every layer; call with gradients ready, before the
        optimizer step. Also snapshots the weights so :meth:`record_updates` can diff them."""
        for layer, module in self.layers.items():
            params = self._params(module)
            if not params:
                continue
            mine = self._mine(params)
            if "weight" in self.tensors and mine:
                self._add_sum((layer, "weight"), mine)
            grads = [g for g in map(local_grad, self._mine(params, of_grad=True)) if g is not None]
            if "weight_grad" in self.tensors and grads:
                self._add_sum((layer, "weight_grad"), grads)
            if "update" in self.tensors:
                for p in mine:
                    if id(p) not in self._snapshot:
                        self._snapshot[id(p)] = local_tensor(p).detach().clone()

    def record_updates(self) -> None:
        """Update (parameter after the step minus before) of every layer; call after the step."""
        if not self._snapshot:
            return
        for layer, module in self.layers.items():
            diffs = [
                local_tensor(p).detach() - self._snapshot[id(p)]
                for p in self._params(module)
                if id(p) in self._snapshot
            ]
            if diffs:
                self._add_sum((layer, "update"), diffs)
        self._snapshot.clear()

    def drop_snapshot(self) -> None:
        """Forget the weights saved for the update (the step ended without one)."""
        self._snapshot.clear()

    def _add_sum(self, key: Key, tensors: list[Tensor]) -> None:
        # A layer's weight statistic covers all its role-carrying parameters together.
        total = torch.stack([self._stats(t) for t in tensors]).sum(0)
        if key in self.stats:
            self.stats[key] = self.stats[key] + total
        else:
            self.stats[key] = total
            self.events.append(key)

    def keys(self) -> list[Key]:
        """Every (layer, tensor) pair in a fixed order (the same on every rank)."""
        return [(layer, t) for layer in self.layers for t in self.tensors]

    def collect(self) -> Tensor:
        """All statistics as one ``(len(keys()), fields)`` tensor (zeros where nothing was
        recorded), then reset for the next monitor step."""
        device = self.device or next((s.device for s in self.stats.values()), torch.device("cpu"))
        zero = torch.zeros(width(self.formats), dtype=torch.float64, device=device)
        out = torch.stack([self.stats.get(k, zero) for k in self.keys()])
        self.stats = {}
        return out

    def event_order(self) -> list[Key]:
        """Keys ordered as their tensors came into being in the last step: weights, then
        activations in forward order, activation gradients in backward order, weight
        gradients, updates. Read before :meth:`collect` resets; cleared by :meth:`reset_events`."""
        ordered: list[Key] = []
        for kind in EVENT_ORDER:
            keys = [k for k in self.events if k[1] == kind]  # hook order within a kind
            # Weight gradients are read in layer order but backward produced them in reverse.
            ordered += keys[::-1] if kind == "weight_grad" else keys
        return ordered

    def reset_events(self) -> None:
        self.events = []
