"""The unit-scaling maths: plain PyTorch, no Lightning.

``functional`` holds the unit-scaled ops (``umup``), ``standard`` their plain twins (``sp``),
``modules`` the layers that carry u-μP roles, ``optim`` the parameter groups, ``fp8`` the FP8
simulation and ``global_batch`` the data-parallel gradient correction.
"""

from lit_unitscale.unit import fp8, functional, global_batch, standard
from lit_unitscale.unit.modules import (
    Embedding,
    LayerNorm,
    Linear,
    LinearReadout,
    ParamSpec,
    RMSNorm,
    UnitModule,
    named_param_specs,
    set_depth,
    simulate_fp8_matmuls,
    use_fp8_matmuls,
)
from lit_unitscale.unit.optim import adam_lr_multiplier, param_groups
from lit_unitscale.unit.parametrization import PARAMETRIZATIONS, Parametrization, functional_for

__all__ = [
    "fp8",
    "functional",
    "global_batch",
    "standard",
    "Embedding",
    "LayerNorm",
    "Linear",
    "LinearReadout",
    "ParamSpec",
    "RMSNorm",
    "UnitModule",
    "named_param_specs",
    "set_depth",
    "simulate_fp8_matmuls",
    "use_fp8_matmuls",
    "adam_lr_multiplier",
    "param_groups",
    "PARAMETRIZATIONS",
    "Parametrization",
    "functional_for",
]
