"""torch.compile(fullgraph=True) of a pre-norm block built from the unit ops (attention, MLP,
norms, residuals) gives the eager numbers: output and every gradient within 1e-5 relative
(max-norm, fp32). ``aot_eager`` traces the same graph (dynamo + AOT autograd) cheaply; the
inductor run (code generation, ~30 s on 2 cores) is marked slow."""

from __future__ import annotations

import math

import pytest
import torch
from _unit_helpers import rel_err
from torch import nn

import lit_unitscale.unit.functional as U
from lit_unitscale.unit import LayerNorm, Linear, RMSNorm, fp8, global_batch

TOL = 1e-5


class Block(nn.Module):
    def __init__(self, width: int = 32, heads: int = 4, tau: float = 0.5) -> None:
        super().__init__()
        self.heads, self.tau = heads, tau
        self.attn_norm = RMSNorm(width)
        self.qkv = Linear(width, 3 * width)
        self.out = Linear(width, width)
        self.mlp_norm = LayerNorm(width)
        self.up = Linear(width, 2 * width)
        self.gate = Linear(width, 2 * width)
        self.down = Linear(2 * width, width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        r, skip = U.residual_split(x, self.tau)
        q, k, v = self.qkv(self.attn_norm(r)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = U.scaled_dot_product_attention(q, k, v, is_causal=True, mult=0.8)
        x = U.residual_add(self.out(a.transpose(1, 2).reshape(b, n, d)), skip, self.tau)
        r, skip = U.residual_split(x, self.tau)
        r = self.mlp_norm(r)
        h = U.silu_glu(self.up(r), self.gate(r)) + U.gelu(self.up(r), mult=1.5)
        return U.residual_add(self.down(U.softmax(h, dim=-1, mult=0.5) * h), skip, self.tau)


def _run(model, x):
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}
    return y.detach(), x.grad.clone(), grads


def _check(backend: str, fp8_too: bool) -> None:
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    y0, gx0, g0 = _run(model, x)
    y1, gx1, g1 = _run(compiled, x)
    assert rel_err(y1, y0) <= TOL
    assert rel_err(gx1, gx0) <= TOL
    for n in g0:
        assert rel_err(g1[n], g0[n]) <= TOL, n

    # Global state: under data_parallel the weight gradients must pick up sqrt(W*k), also when
    # compiled (dynamo guards on the factor and recompiles rather than reusing a stale graph).
    with global_batch.data_parallel(2, 2):
        _, gx2, g2 = _run(compiled, x)
    assert rel_err(gx2, gx0) <= TOL  # activation gradients do not change
    for n in g0:
        assert rel_err(g2[n], 2.0 * g0[n]) <= TOL, n

    if not fp8_too:
        return
    # FP8 simulation traces too, and gives eager's FP8 numbers.
    with fp8.fp8_matmuls():
        y3, gx3, g3 = _run(model, x)
        y4, gx4, g4 = _run(compiled, x)
    assert rel_err(y4, y3) <= TOL and rel_err(gx4, gx3) <= TOL
    assert rel_err(y3, y0) > 1e-3  # FP8 really changed the numbers
    for n in g3:
        assert rel_err(g4[n], g3[n]) <= TOL, n


def test_compile_fullgraph_aot_eager_matches_eager():
    _check("aot_eager", fp8_too=False)


@pytest.mark.slow
def test_compile_fullgraph_aot_eager_fp8_matches_eager():
    _check("aot_eager", fp8_too=True)


@pytest.mark.slow
def test_compile_fullgraph_inductor_matches_eager():
    _check("inductor", fp8_too=True)


def test_compile_cross_entropy_fullgraph():
    x = torch.randn(40, 11, generator=torch.Generator().manual_seed(4))
    t = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(5))
    t[::4] = -100
    fn = lambda x: U.cross_entropy(x, t)
    torch._dynamo.reset()
    cfn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = fn(xa), cfn(xb)
    la.backward()
    lb.backward()
    assert math.isclose(la.item(), lb.item(), rel_tol=1e-6)
    assert rel_err(xb.grad, xa.grad) <= TOL
