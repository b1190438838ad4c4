"""Build a model with its parameters on the meta device, then fill only this rank's shards.

Building the fp32 model on every rank before sharding needs the whole model in host memory per
process (an 8B model: 32 GB per rank). Under :class:`MetaInit` each parameter is moved to the
meta device as it is registered, and every in-place op the model's own init applies to it
(``normal_``, ``uniform_``, ``fill_``, a row zeroed, ...) is recorded with the random generator's
state before it. Random ops also run once on a scratch tensor of the same shape, so the
generator advances exactly as in a single-device build and everything drawn afterwards (other
parameters, the training run) is the same. :meth:`MetaInit.materialise`, after sharding,
replays each parameter's ops on one full-size temporary on the host (the largest parameter is
the peak, not the model), keeps this rank's shard on the device and drops the rest: the
initial weights equal the single-device build's for the same seed, bit for bit.

Buffers (RoPE and sinusoid tables) are built for real: they are small and computed, not drawn.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

# In-place ops whose result does not depend on the tensor's previous values.
_OVERWRITES = {
    "aten::normal_",
    "aten::uniform_",
    "aten::fill_",
    "aten::zero_",
    "aten::random_",
    "aten::bernoulli_",
    "aten::exponential_",
    "aten::cauchy_",
    "aten::log_normal_",
    "aten::geometric_",
    "aten::copy_",
}


class MetaInitError(RuntimeError):
    """The model's init does something that cannot be replayed shard by shard."""


def _key(t: Tensor) -> int:
    # Views share their base's storage; the storage identifies the parameter on meta too.
    return t.untyped_storage()._cdata


@dataclasses.dataclass
class _Op:
    func: Any
    args: tuple
    kwargs: dict
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    rng_state: Tensor | None  # generator state before a random op


@dataclasses.dataclass
class _Record:
    meta: Tensor
    initial: Tensor | None  # the value at registration, until an op overwrites all of it
    ops: list[_Op] = dataclasses.field(default_factory=list)

    def replay(self, scratch: _Scratch) -> Tensor:
        """The parameter's full value on the host, as the single-device build left it, in
        ``scratch``'s memory (valid until its next use)."""
        full = scratch.like(self.meta)
        if self.initial is not None:
            full.copy_(self.initial)
        for op in self.ops:
            view = full.as_strided(op.size, op.stride, op.offset)
            kwargs = dict(op.kwargs)
            if op.rng_state is not None:
                generator = torch.Generator()
                generator.set_state(op.rng_state)
                kwargs["generator"] = generator
            op.func(view, *op.args, **kwargs)
        return full


class _Scratch:
    """One host buffer per dtype, grown to the largest tensor asked for and reused: freeing and
    allocating a full-size tensor per parameter leaves the allocator's heap resident."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, Tensor] = {}

    def like(self, t: Tensor) -> Tensor:
        """Uninitialised memory with ``t``'s shape, strides and dtype.

        Args:
            t: the (meta) tensor to imitate.
        """
        needed = 1 + sum((n - 1) * s for n, s in zip(t.size(), t.stride(), strict=True))
        needed = needed if t.numel() else 0
        buffer = self.buffers.get(t.dtype)
        if buffer is None or buffer.numel() < needed:
            self.buffers.pop(t.dtype, None)
            buffer = self.buffers[t.dtype] = torch.empty(needed, dtype=t.dtype)
        return buffer.as_strided(t.size(), t.stride())


def _is_random(func: Any) -> bool:
    return torch.Tag.nondeterministic_seeded in func.tags


def _mutates_self(func: Any) -> bool:
    args = func._schema.arguments
    return bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write


class _Recorder(TorchDispatchMode):
    def __init__(self, records: dict[int, _Record]) -> None:
        super().__init__()
        self.records = records
        self.scratch = _Scratch()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args and isinstance(args[0], Tensor) else None
        record = None
        if target is not None and target.is_meta and _mutates_self(func):
            record = self.records.get(_key(target))
        if record is None:
            for value in [*args[1:], *kwargs.values()]:
                if isinstance(value, Tensor) and value.is_meta and _key(value) in self.records:
                    if _mutates_self(func) or "out" in kwargs:
                        raise MetaInitError(
                            f"{func} reads a parameter while initialising another tensor; "
                            "such an init cannot be replayed shard by shard"
                        )
            return func(*args, **kwargs)
        rest = args[1:]
        for value in [*rest, *kwargs.values()]:
            if isinstance(value, Tensor) and value.is_meta:
                raise MetaInitError(f"{func} initialises a parameter from a meta tensor")
        state = None
        if _is_random(func):
            generator = kwargs.get("generator") or torch.default_generator
            state = generator.get_state()
            # Draw as the real build would, so that the generator moves on by as much.
            func(self.scratch.like(target), *rest, **kwargs)
            kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
        whole = (
            target.size() == record.meta.size()
            and target.stride() == record.meta.stride()
            and target.storage_offset() == record.meta.storage_offset()
        )
        if whole and func._schema.name in _OVERWRITES:
            record.initial, record.ops = None, []
        record.ops.append(
            _Op(
                func,
                rest,
                kwargs,
                tuple(target.size()),
                tuple(target.stride()),
                target.storage_offset(),
                state,
            )
        )
        return target


class MetaInit:
    """Context in which a model is built with meta parameters and a record of their init.

    Example::

        with MetaInit() as init:
            model = build()
        shard(model)
        init.materialise(model, device)
    """

    def __init__(self) -> None:
        self._records: dict[int, _Record] = {}
        self._by_name: dict[str, _Record] = {}
        self._mode: _Recorder | None = None
        self._handle = None

    def _register(self, module: nn.Module, name: str, param: nn.Parameter | None):
        if param is None or (param.is_meta and _key(param) in self._records):
            return None  # a shared (tied) parameter registered again
        if param.is_meta:
            raise MetaInitError(f"parameter {name} of {type(module).__name__} is already meta")
        meta = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        self._records[_key(meta)] = _Record(meta, param.detach())
        return meta

    def __enter__(self) -> MetaInit:
        from torch.nn.modules.module import register_module_parameter_registration_hook

        self._handle = register_module_parameter_registration_hook(self._register)
        self._mode = _Recorder(self._records)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # Loading pretrained weights into meta parameters is recorded and replayed, not lost.
        warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter")
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self._mode.scratch = _Scratch()  # frees the draws' memory
        self._warnings.__exit__(*exc)
        self._handle.remove()

    def name_parameters(self, model: nn.Module) -> None:
        """Remember each parameter's name; call once the build is complete, before wrapping.

        Args:
            model: the model built inside the context.
        """
        for name, param in model.named_parameters():
            self._by_name[_clean(name)] = self._records[_key(param)]
        meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
        if meta_buffers:
            raise MetaInitError(f"buffers {meta_buffers} were computed from meta parameters")

    @torch.no_grad()
    def materialise(self, model: nn.Module, device: torch.device | str) -> None:
        """Allocate the (sharded) parameters on ``device`` and fill them with their init.

        Args:
            model: the model, after ``fully_shard`` (parameters may be DTensors).
            device: the device parameters live on (the strategy's root device).
        """
        if not self._by_name:
            self.name_parameters(model)
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        model.to_empty(device=device)
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        scratch = _Scratch()
        for name, param in model.named_parameters():
            record = self._by_name.get(_clean(name))
            if record is None:
                raise MetaInitError(f"parameter {name} was not built under MetaInit")
            full = record.replay(scratch)
            local = param.to_local() if hasattr(param, "to_local") else param
            part = _local_part(full, param)
            if part.shape != local.shape:
                raise MetaInitError(
                    f"{name}: local shard {tuple(local.shape)} != expected {tuple(part.shape)}"
                )
            local.copy_(part)
        self._records.clear()
        self._by_name.clear()


def _clean(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "")


def _local_part(full: Tensor, param: Tensor) -> Tensor:
    """This rank's part of ``full`` under ``param``'s placement (FSDP2: ``torch.chunk``)."""
    placements = getattr(param, "placements", None)
    if placements is None:
        return full
    from torch.distributed.tensor import Replicate, Shard

    mesh = param.device_mesh
    part = full
    for dim, placement in enumerate(placements):
        if isinstance(placement, Replicate):
            continue
        if not isinstance(placement, Shard):
            raise MetaInitError(f"cannot place a parameter with {placement}")
        chunks = torch.chunk(part, mesh.size(dim), dim=placement.dim)
        index = mesh.get_local_rank(dim)
        part = chunks[index] if index < len(chunks) else part.narrow(placement.dim, 0, 0)
    return part
