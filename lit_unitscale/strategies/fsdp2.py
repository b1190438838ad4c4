"""FSDP2 sharding of our models: ``fully_shard`` each Transformer block, then the root.

Called from the task's ``configure_model`` when the strategy provides a device mesh
(Lightning's ``ModelParallelStrategy``); model code itself stays single-device.
"""

from __future__ import annotations

from torch import nn


def shard_model(
    model: nn.Module,
    mesh,
    reshard_after_forward: bool = True,
    mp_policy=None,
) -> nn.Module:
    """Shard ``model`` over the mesh's data-parallel dimension, block by block.

    Args:
        model: a model with a ``blocks()`` method (all lit_unitscale models have one).
        mesh: the device mesh from Lightning's ModelParallelStrategy.
        reshard_after_forward: free unsharded parameters after each block's forward.
        mp_policy: optional ``torch.distributed.fsdp.MixedPrecisionPolicy``.
    """
    from torch.distributed.fsdp import fully_shard

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in model.blocks():
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model
