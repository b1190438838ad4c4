"""Parallelism and precision: strategies selected by ``recipes/strategy/*.yaml`` overlays and
precision plugins selected by ``recipes/precision/*.yaml``. Model code stays single-device."""

from lit_unitscale.strategies.ddp import DDPStrategy
from lit_unitscale.strategies.deepspeed import DeepSpeedStrategy
from lit_unitscale.strategies.fsdp2 import FSDP2Strategy, shard_model
from lit_unitscale.strategies.precision import (
    DeepSpeedAccumulationPrecision,
    DeepSpeedFP8Precision,
    DeepSpeedFP8SimPrecision,
    FP8Precision,
    FP8SimPrecision,
    FP16NoScalePrecision,
    PrecisionError,
    check_precision,
)
from lit_unitscale.strategies.topology import TopologyError, check_slurm_topology

__all__ = [
    "DeepSpeedAccumulationPrecision",
    "DDPStrategy",
    "DeepSpeedFP8Precision",
    "DeepSpeedFP8SimPrecision",
    "DeepSpeedStrategy",
    "FP16NoScalePrecision",
    "FP8Precision",
    "FP8SimPrecision",
    "FSDP2Strategy",
    "PrecisionError",
    "TopologyError",
    "check_precision",
    "check_slurm_topology",
    "shard_model",
]
