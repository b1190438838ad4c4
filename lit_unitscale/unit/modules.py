"""Modules that carry their u-μP role.

Each module records a :class:`ParamSpec` (role, fan-in, residual depth) for each parameter it
owns, on the module itself. Modules survive FSDP2's ``fully_shard`` and ZeRO-3 partitioning,
whereas parameter shapes and custom attributes on parameters do not; the optimizer and the
scale monitor read roles through :func:`named_param_specs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor, nn

from lit_unitscale.unit.constraints import Constraint
from lit_unitscale.unit.fp8 import SIMULATED
from lit_unitscale.unit.kernels import MatmulFormat
from lit_unitscale.unit.parametrization import Parametrization, functional_for

Role = Literal["weight", "output", "embedding", "bias", "norm"]
ROLES = ("weight", "output", "embedding", "bias", "norm")


@dataclass(frozen=True)
class ParamSpec:
    """What the u-μP rules need to know about one parameter."""

    role: Role
    fan_in: int
    depth: int | None = None  # layers in the residual stack holding it (None: outside a stack)


MONITOR_ROLES = ("embed", "block", "final_norm", "head")


class UnitModule(nn.Module):
    """Base for modules whose parameters carry roles and whose ops follow a parametrization.

    ``monitor_role`` says what a monitor should call the module (one of :data:`MONITOR_ROLES`,
    or None): models set it, callbacks read it, so neither needs the other's class names.

    Args:
        parametrization: ``umup`` (unit-scaled ops) or ``sp`` (their plain twins).
    """

    monitor_role: str | None = None

    def __init__(self, parametrization: Parametrization = "umup") -> None:
        super().__init__()
        functional_for(parametrization)  # validates the name early
        self.parametrization = parametrization
        self.param_specs: dict[str, ParamSpec] = {}

    @property
    def F(self) -> ModuleType:  # noqa: N802 - reads like torch.nn.functional at call sites
        return functional_for(self.parametrization)

    def _register(self, name: str, param: nn.Parameter, role: Role, fan_in: int) -> None:
        setattr(self, name, param)
        self.param_specs[name] = ParamSpec(role, fan_in)


def named_param_specs(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, ParamSpec]]:
    """Every parameter of ``model`` that has a role, with its qualified name, once each.

    Args:
        model: any module tree (sharded or not).
    """
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, spec in getattr(module, "param_specs", {}).items():
            param = getattr(module, pname, None)
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            yield (f"{mod_name}.{pname}" if mod_name else pname), param, spec


def set_depth(module: nn.Module, depth: int) -> None:
    """Record that the role-carrying parameters under ``module`` sit in a ``depth``-layer stack.

    Args:
        module: the residual stack (or one of its layers).
        depth: number of layers in the stack.
    """
    for sub in module.modules():
        specs = getattr(sub, "param_specs", None)
        if specs:
            sub.param_specs = {k: replace(v, depth=depth) for k, v in specs.items()}


class Linear(UnitModule):
    """Linear layer: unit-scaled under ``umup`` (N(0,1) init), ``nn.Linear``-like under ``sp``.

    Args:
        in_features: input width (fan-in).
        out_features: output width.
        bias: add a learnable bias.
        parametrization: ``"umup"`` or ``"sp"``.
        constraint: scale constraint between output and input gradient (umup only).
        role: u-μP role of the weight (``"weight"`` for hidden layers, ``"output"`` for readouts).
        parts: equal projections fused into this one (e.g. 2 for SwiGLU's gate and up).

    ``matmul`` says how this layer multiplies (None: the working precision; ``"fp8"``: real
    FP8 GEMMs; ``"fp8-sim"``: the FP8 simulation). It is an attribute of the module, set by
    :func:`use_fp8_matmuls` or :func:`simulate_fp8_matmuls` when a strategy converts the model,
    so it travels with the layer through sharding wrappers, recomputed forwards and
    ``torch.compile``.
    """

    matmul: MatmulFormat = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        parametrization: Parametrization = "umup",
        constraint: Constraint = "to_output_scale",
        role: Role = "weight",
        parts: int = 1,
    ) -> None:
        super().__init__(parametrization)
        self.in_features, self.out_features, self.constraint = in_features, out_features, constraint
        self.parts = parts
        self._register(
            "weight", nn.Parameter(torch.empty(out_features, in_features)), role, in_features
        )
        if bias:
            self._register("bias", nn.Parameter(torch.empty(out_features)), "bias", in_features)
        else:
            self.bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.parametrization == "umup":
            nn.init.normal_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        input: Tensor,
        input_mult: float = 1.0,
        output_mult: float = 1.0,
        grad_input_mult: float = 1.0,
    ) -> Tensor:
        """The multipliers fold a neighbour's constants into this layer's GEMMs (see
        :func:`lit_unitscale.unit.functional.linear`)."""
        return self.F.linear(
            input,
            self.weight,
            self.bias,
            self.constraint,
            parts=self.parts,
            input_mult=input_mult,
            output_mult=output_mult,
            grad_input_mult=grad_input_mult,
            matmul=self.matmul,
        )

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        fp8 = f", matmul={self.matmul}" if self.matmul else ""
        return (
            f"{self.in_features}, {self.out_features}, bias={has_bias}, {self.parametrization}"
            + fp8
        )


class LinearReadout(Linear):
    """Output projection (role ``output``): forward scale ``1/fan_in`` under ``umup``.

    Args:
        in_features: input width (fan-in).
        out_features: output width (e.g. vocabulary size).
        bias: add a learnable bias.
        parametrization: ``"umup"`` or ``"sp"``.
        constraint: scale constraint; None keeps the backward unit-scaled.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        parametrization: Parametrization = "umup",
        constraint: Constraint = None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, parametrization, constraint, role="output"
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.parametrization == "sp":
            # As GPT-2, BERT and transformers start a head: logits near zero, so the initial
            # loss is ln(classes) (torch's default init adds ~0.1 nats to a 3-class loss).
            nn.init.normal_(self.weight, std=0.02)

    def forward(self, input: Tensor) -> Tensor:
        return self.F.linear_readout(
            input, self.weight, self.bias, self.constraint, matmul=self.matmul
        )


def use_fp8_matmuls(
    model: nn.Module, exclude: tuple[str, ...] = (), matmul: MatmulFormat = "fp8"
) -> list[str]:
    """Make every hidden linear of ``model`` multiply in real FP8; return their names.

    Hidden linears are the :class:`Linear` layers that are not readouts: attention's
    projections and the MLP's: the layers µnit Scaling runs in FP8.
    Embeddings, readouts and attention's own products stay in the working precision.

    Args:
        model: any module tree built from :class:`Linear` layers.
        exclude: glob patterns of module names to keep in the working precision (e.g.
            ``"*.layers.0.*"``, ``"*.mlp.down"``).
        matmul: the format to set (None turns FP8 off again).
    """
    chosen = []
    for name, module in model.named_modules():
        hidden = isinstance(module, Linear) and not isinstance(module, LinearReadout)
        if hidden and not any(fnmatch(name, pattern) for pattern in exclude):
            module.matmul = matmul
            chosen.append(name)
    return chosen


def simulate_fp8_matmuls(model: nn.Module, enabled: bool = True) -> list[str]:
    """Simulate FP8 in every matmul of ``model``: each module that declares a ``matmul``
    format (linears, readouts, attention's products, a tied readout) is set to ``"fp8-sim"``;
    return their names. What :func:`lit_unitscale.unit.fp8.fp8_matmuls` does for a region,
    carried by the modules instead (so recomputed forwards see it too).

    Args:
        model: any module tree.
        enabled: False sets them back to the working precision.
    """
    chosen = []
    for name, module in model.named_modules():
        if "matmul" in dir(type(module)):
            module.matmul = SIMULATED if enabled else None
            chosen.append(name)
    return chosen


class Embedding(UnitModule):
    """Embedding table (role ``embedding``), N(0,1) init in both parametrizations.

    Args:
        num_embeddings: table size (vocabulary).
        embedding_dim: width of each row.
        padding_idx: row that receives no gradient.
        parametrization: ``"umup"`` or ``"sp"``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        parametrization: Parametrization = "umup",
    ) -> None:
        super().__init__(parametrization)
        self.num_embeddings, self.embedding_dim, self.padding_idx = (
            num_embeddings,
            embedding_dim,
            padding_idx,
        )
        # fan_in of a table is its width: u-μP scales its Adam LR by width**-0.5.
        weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self._register("weight", weight, "embedding", embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As nn.Embedding: N(0, 1), with the padding row zeroed (it never receives a gradient,
        # so a random row would stay as a constant non-zero input forever).
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor, tokens: int | None = None, grad_mult: float = 1.0) -> Tensor:
        """``tokens``: lookups of this table in the whole step (None: this call's);
        ``grad_mult``: a factor on this read's table gradient."""
        return self.F.embedding(input, self.weight, self.padding_idx, tokens, grad_mult)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.parametrization}"


class LayerNorm(UnitModule):
    """Layer norm with gain (role ``norm``) and optional bias (role ``bias``).

    Args:
        dim: normalised width.
        eps: added to the variance.
        elementwise_affine: learn a per-element gain.
        bias: learn a per-element bias (only with ``elementwise_affine``).
        parametrization: ``"umup"`` or ``"sp"``.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        parametrization: Parametrization = "umup",
    ) -> None:
        super().__init__(parametrization)
        self.dim, self.eps = dim, eps
        self.weight = self.bias = None
        if elementwise_affine:
            self._register("weight", nn.Parameter(torch.ones(dim)), "norm", dim)
            if bias:
                self._register("bias", nn.Parameter(torch.zeros(dim)), "bias", dim)

    def forward(self, input: Tensor, weight_grad_mult: float = 1.0) -> Tensor:
        """``weight_grad_mult``: a factor on the parameters' gradient scale."""
        return self.F.layer_norm(
            input, (self.dim,), self.weight, self.bias, self.eps, weight_grad_mult
        )


class RMSNorm(UnitModule):
    """RMS norm with an optional gain (role ``norm``).

    Args:
        dim: normalised width.
        eps: added to the mean square.
        elementwise_affine: learn a per-element gain.
        parametrization: ``"umup"`` or ``"sp"``.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        parametrization: Parametrization = "umup",
    ) -> None:
        super().__init__(parametrization)
        self.dim, self.eps = dim, eps
        self.weight = None
        if elementwise_affine:
            self._register("weight", nn.Parameter(torch.ones(dim)), "norm", dim)

    def forward(self, input: Tensor, weight_grad_mult: float = 1.0) -> Tensor:
        """``weight_grad_mult``: a factor on the gain's gradient scale."""
        return self.F.rms_norm(input, (self.dim,), self.weight, self.eps, weight_grad_mult)
