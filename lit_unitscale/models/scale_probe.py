"""Diagnostics: RMS of every module output, its gradient and every weight gradient in one step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lit_unitscale.models.attention import Attention
from lit_unitscale.models.stack import MLP, Block
from lit_unitscale.models.transformer import TokenEmbedding
from lit_unitscale.unit import Linear, LinearReadout, fp8, named_param_specs

PROBED = (Linear, Attention, MLP, Block, TokenEmbedding)


@dataclass
class Row:
    """One measured tensor of :func:`probe_scales`."""

    name: str  # module or parameter name
    op: str  # "readout", "q_proj", "up_proj", "attn", "block", "linear", "mlp", "embed"
    kind: str  # "act", "act_grad" or "<role>_grad"
    rms: float
    layer: int | None


def _op(name: str, module: nn.Module) -> str:
    if isinstance(module, LinearReadout):
        return "readout"
    if isinstance(module, Attention):
        return "attn"
    if isinstance(module, Block):
        return "block"
    if isinstance(module, MLP):
        return "mlp"
    if isinstance(module, TokenEmbedding):
        return "embed"
    leaf = name.rsplit(".", 1)[-1]
    return {"q": "q_proj", "up": "up_proj", "o": "attn_out_proj"}.get(leaf, "linear")


def _layer(name: str) -> int | None:
    return int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None


def rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


def folded_multipliers(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Constants that ride in a module's output GEMM but belong to the op after it, as
    (factor on the output, factor on its gradient) per module name: a residual branch's weight
    (in its last projection and so in the branch module's output; the value only) and the
    GELU's input multiplier (in the up projection; value ×m, gradient ÷m).

    Args:
        model: any model built from :class:`Block` and :class:`MLP`.
    """
    factors: dict[str, tuple[float, float]] = {}

    def fold(key: str, value: float, grad: float) -> None:
        v, g = factors.get(key, (1.0, 1.0))
        factors[key] = (v * value, g * grad)

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Block):
            branches = ["attn"] + (["cross"] if module.cross is not None else []) + ["mlp"]
            for branch, tau in zip(branches, module.taus, strict=True):
                weight = module.F.residual_weights(tau)[0] or 1.0
                last = "o" if branch != "mlp" else "down"
                fold(f"{prefix}{branch}", weight, 1.0)
                fold(f"{prefix}{branch}.{last}", weight, 1.0)
        if isinstance(module, MLP) and not fp8.simulating(module.up.matmul):
            fold(f"{prefix}up", module.up_mult, 1 / module.up_mult)
    return factors


def probe_scales(model: nn.Module, run) -> list[Row]:
    """Run ``run(model) -> loss``, backward, and return one Row per recorded tensor.

    A module's output and its gradient are reported without the constants folded into them
    that belong to the op after (:func:`folded_multipliers`): the table reads as the composed
    ops do."""
    rows: list[Row] = []
    handles = []
    ops = {}
    unfold = folded_multipliers(model)

    def hook(name: str, op: str):
        def fwd(_m, _inp, out):
            value, grad = unfold.get(name, (1.0, 1.0))
            rows.append(Row(name, op, "act", rms(out) / abs(value), _layer(name)))
            if out.requires_grad:
                out.register_hook(
                    lambda g: rows.append(
                        Row(name, op, "act_grad", rms(g) / abs(grad), _layer(name))
                    )
                )

        return fwd

    for name, module in model.named_modules():
        if isinstance(module, PROBED):
            ops[name] = _op(name, module)
            handles.append(module.register_forward_hook(hook(name, ops[name])))
    loss = run(model)
    loss.backward()
    for h in handles:
        h.remove()
    for name, param, spec in named_param_specs(model):
        if param.grad is not None:
            module_name = name.rsplit(".", 1)[0]
            op = ops.get(module_name, "param")
            rows.append(Row(name, op, f"{spec.role}_grad", rms(param.grad), _layer(name)))
    return rows


def table(rows: list[Row], title: str) -> str:
    lines = [title, f"{'tensor':<46}{'kind':<16}{'rms':>8}"]
    lines += [f"{r.name:<46}{r.kind:<16}{r.rms:>8.3f}" for r in rows]
    return "\n".join(lines)
