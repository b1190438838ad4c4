"""Checks every lit_unitscale strategy runs when the Trainer is built, before any launch."""

from __future__ import annotations

import atexit

from lit_unitscale.strategies.precision import check_precision
from lit_unitscale.strategies.topology import check_slurm_topology


class CheckedStrategy:
    """Mixin: validate topology against SLURM and the precision plugin against the strategy.

    ``_configure_launcher`` runs in ``Trainer.__init__`` once devices, nodes, the cluster
    environment and the precision plugin are known, so a bad combination fails before any
    process is started (and in every process started by SLURM).
    """

    family: str = "ddp"

    def _configure_launcher(self) -> None:
        check_slurm_topology(devices=self.num_processes, num_nodes=self.num_nodes)
        accelerator = type(self.accelerator).__name__.replace("Accelerator", "").lower()
        check_precision(self.family, self.precision_plugin, accelerator)
        super()._configure_launcher()

    def setup_environment(self) -> None:
        super().setup_environment()
        # Lightning destroys the process group at exit only for NCCL. Left to interpreter
        # finalisation, gloo's worker threads can still hold tensors whose release needs the
        # GIL, and the process aborts (SIGABRT) after a finished run.
        atexit.unregister(destroy_process_group_if_initialized)
        atexit.register(destroy_process_group_if_initialized)


def destroy_process_group_if_initialized() -> None:
    """Destroy the default process group if one is up (safe to call more than once)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
