"""FSDP2: Lightning's ``ModelParallelStrategy`` with ``fully_shard`` per Transformer block.

The task's ``configure_model`` builds the single-device model and hands it to the strategy's
:meth:`FSDP2Strategy.parallelize` (or to :func:`shard_model` under a plain
``ModelParallelStrategy``); model code itself stays single-device.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lit_unitscale.models.activation_checkpointing import checkpoint_blocks
from lit_unitscale.strategies.checks import CheckedStrategy
from lit_unitscale.strategies.topology import TopologyError

DType = Literal["float32", "bfloat16", "float16"]


def shard_model(
    model: nn.Module,
    mesh,
    reshard_after_forward: bool = True,
    mp_policy=None,
) -> nn.Module:
    """Shard ``model`` over the mesh's data-parallel dimension, block by block.

    The model's ``entry_methods`` (e.g. a sequence-to-sequence model's ``encode`` and
    ``decode_logits``, which decoding calls instead of ``forward``) are registered as FSDP
    forward methods, so calling them gathers the root's parameters as ``forward`` does.

    Args:
        model: a model with a ``blocks()`` method (all lit_unitscale models have one).
        mesh: the device mesh from Lightning's ModelParallelStrategy.
        reshard_after_forward: free unsharded parameters after each block's forward.
        mp_policy: optional ``torch.distributed.fsdp.MixedPrecisionPolicy``.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in model.blocks():
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for name in getattr(model, "entry_methods", ()):
        register_fsdp_forward_method(model, name)
    return model


class FSDP2Strategy(CheckedStrategy, ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over all processes, one ``fully_shard`` per block.

    Args:
        data_parallel_size: processes sharing the model (``"auto"``: all of them).
        tensor_parallel_size: tensor-parallel group size; only 1 (tensor parallelism is not
            implemented: every rank of a tensor-parallel group would train on the same batch).
        reshard_after_forward: free each block's gathered parameters after its forward and
            gather them again in backward (less memory, one more all-gather).
        param_dtype: FSDP2 mixed precision: dtype parameters are gathered and computed in
            (None: bfloat16 under ``bf16-mixed`` precision, fp32 otherwise). The sharded master
            weights stay fp32.
        reduce_dtype: dtype of the gradient reduce-scatter (None: float32, also when
            parameters are gathered in a lower precision).
        activation_checkpointing: recompute each block's activations in backward.
        save_distributed_checkpoint: each rank writes its shard (a folder); False gathers one
            file on rank 0.
        process_group_backend: ``gloo``, ``nccl`` (None: by device).
        timeout: collective timeout.
    """

    family = "fsdp2"

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        reshard_after_forward: bool = True,
        param_dtype: DType | None = None,
        reduce_dtype: DType | None = None,
        activation_checkpointing: bool = False,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        for name, size in (
            ("data_parallel_size", data_parallel_size),
            ("tensor_parallel_size", tensor_parallel_size),
        ):
            if size != "auto" and (not isinstance(size, int) or size < 1):
                raise TopologyError(f"FSDP2Strategy {name} must be 'auto' or >= 1, got {size!r}")
        if tensor_parallel_size != 1:
            raise TopologyError(
                f"FSDP2Strategy tensor_parallel_size={tensor_parallel_size} is not supported: "
                "lit_unitscale models are not split across devices, so the ranks of a "
                "tensor-parallel group would train on identical batches; set "
                "tensor_parallel_size: 1 (every process is a data-parallel rank)"
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.activation_checkpointing = activation_checkpointing

    def setup_environment(self) -> None:
        # Lightning's "auto" puts tensor parallelism inside a node; ours is pure data parallel.
        if self._data_parallel_size == "auto":
            self._data_parallel_size = (
                self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
            )
        super().setup_environment()

    def gather_dtype(self) -> torch.dtype | None:
        """The dtype FSDP2 all-gathers parameters in: ``param_dtype`` when set, else bfloat16
        when the trainer runs ``bf16-mixed`` (autocast would cast the fp32 weights after
        gathering them, moving twice the bytes), else None (the fp32 weights themselves)."""
        if self.param_dtype is not None:
            return getattr(torch, self.param_dtype)
        precision = getattr(self.precision_plugin, "precision", None)
        return torch.bfloat16 if precision == "bf16-mixed" else None

    def mp_policy(self):
        """The FSDP2 ``MixedPrecisionPolicy`` (or None when everything stays fp32).

        Gradients are reduce-scattered in fp32 unless ``reduce_dtype`` says otherwise: summing
        the ranks' gradients in bf16 loses the low bits of each before the average.
        """
        gather = self.gather_dtype()
        reduce = None if self.reduce_dtype is None else getattr(torch, self.reduce_dtype)
        if reduce is None and gather is not None and gather != torch.float32:
            reduce = torch.float32
        if gather is None and reduce is None:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=gather, reduce_dtype=reduce)

    def parallelize(self, model: nn.Module, mesh) -> nn.Module:
        """Apply activation checkpointing (if asked) and FSDP2 to a freshly built model.

        Args:
            model: the single-device model with a ``blocks()`` method.
            mesh: the strategy's device mesh.
        """
        if self.activation_checkpointing:
            checkpoint_blocks(model)
        return shard_model(
            model,
            mesh,
            reshard_after_forward=self.reshard_after_forward,
            mp_policy=self.mp_policy(),
        )
