"""Shared helpers for the unit-layer tests: seeded tensors, relative errors, result tables."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

# Tables filled by the tests and printed at the end of the session (visible with ``-s``).
CONFORMANCE: dict[tuple[str, str], float] = defaultdict(float)  # (op, shape) -> max rel error
RMS_ROWS: list[tuple[str, str, str, float, dict[str, float]]] = []  # op, shape, case, out, grads


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """Max-norm relative error ``max|a - e| / max|e|`` (0 when both are all zero).

    Elementwise relative error is meaningless near zeros (e.g. masked attention entries), so the
    error is measured against the largest magnitude in the expected tensor.
    """
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    denom = e.abs().max().item()
    diff = (a - e).abs().max().item()
    if denom == 0.0:
        return diff
    return diff / denom


def rms(t: Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def leaves(*tensors: Tensor) -> list[Tensor]:
    """Fresh leaf copies (requires_grad for floating tensors) of ``tensors``."""
    out = []
    for t in tensors:
        c = t.detach().clone()
        if c.is_floating_point():
            c.requires_grad_(True)
        out.append(c)
    return out


def forward_backward(fn, inputs: list[Tensor], seed: int = 1234) -> tuple[Tensor, list]:
    """Run ``fn(*inputs)``, backpropagate a seeded unit-normal gradient, return (out, grads)."""
    out = fn(*inputs)
    if out.requires_grad:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        out.backward(g if out.dim() else None)
    return out.detach(), [t.grad if t.is_floating_point() else None for t in inputs]


def compare(op: str, shape: str, ours, ref, inputs: list[Tensor], tol: float = 1e-5) -> float:
    """Assert ours and the reference agree (output and every input gradient) within ``tol``."""
    out_a, grads_a = forward_backward(ours, leaves(*inputs))
    out_b, grads_b = forward_backward(ref, leaves(*inputs))
    worst = rel_err(out_a, out_b)
    assert worst <= tol, f"{op} {shape}: output rel err {worst:.2e} > {tol}"
    for i, (ga, gb) in enumerate(zip(grads_a, grads_b, strict=True)):
        if gb is None:
            assert ga is None or not ga.any(), f"{op} {shape}: input {i} has a gradient"
            continue
        assert ga is not None, f"{op} {shape}: input {i} has no gradient"
        e = rel_err(ga, gb)
        assert e <= tol, f"{op} {shape}: grad of input {i} rel err {e:.2e} > {tol}"
        worst = max(worst, e)
    key = (op, shape)
    CONFORMANCE[key] = max(CONFORMANCE[key], worst)
    return worst


def rnd(*shape: int, seed: int = 0, dtype=torch.float32) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fmt_table() -> str:
    lines = []
    if CONFORMANCE:
        lines.append("\n== Conformance vs unit_scaling 0.3.5 (max rel err over cases) ==")
        lines.append(f"{'op':<34} {'shapes':<44} {'max rel err':>11}")
        for (op, shape), e in sorted(CONFORMANCE.items()):
            lines.append(f"{op:<34} {shape:<44} {e:>11.2e}")
    if RMS_ROWS:
        lines.append("\n== Unit scale: RMS of output and gradients (unit-normal inputs) ==")
        lines.append(f"{'op':<22} {'shape':<30} {'case':<26} {'out':>7}  grads")
        for op, shape, case, out, grads in RMS_ROWS:
            g = ", ".join(f"{k}={v:.3f}" for k, v in grads.items())
            lines.append(f"{op:<22} {shape:<30} {case:<26} {out:>7.3f}  {g}")
    return "\n".join(lines)


def isclose_rel(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol)
