"""Data parallel (DDP), with our topology and precision checks."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy as _LightningDDP

from lit_unitscale.strategies.checks import CheckedStrategy


class DDPStrategy(CheckedStrategy, _LightningDDP):
    """Lightning's DDP; accepts every DDPStrategy argument (``process_group_backend``,
    ``find_unused_parameters``, ``start_method``, ...)."""

    family = "ddp"
