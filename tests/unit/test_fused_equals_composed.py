"""Every scale folded into a kernel gives today's composed numbers: output and every gradient
(inputs and parameters) within 1e-6 relative, in both parametrizations, over drawn shapes.

The oracle is the composed ops as they stood before the fold (``composed_oracle``: one
``scale_fwd``/``scale_bwd`` pass per constant), frozen under ``tests/``. Computed in float64,
where reassociating a product of constants moves results by ~1e-16, so 1e-6 leaves room only
for rounding and none for a wrong factor (the smallest scale moved here is ~0.03).
"""

from __future__ import annotations

import pytest
import torch
from _unit_helpers import rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lit_unitscale.unit.functional as U
import lit_unitscale.unit.standard as S
import tests.unit.composed_oracle.functional as CU
import tests.unit.composed_oracle.standard as CS
from lit_unitscale.unit import kernels
from lit_unitscale.unit.scale import scale, scale_bwd, scale_fwd

TOL = 1e-6
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAIRS = {"umup": (U, CU), "sp": (S, CS)}
dims = st.integers(1, 24)
mults = st.sampled_from([1.0, 0.5, 1.7, 3.0])


def _run(fn, tensors: list[torch.Tensor], seed: int):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    out.backward(g if out.dim() else None)
    return [out.detach()] + [t.grad for t in leaves if t.is_floating_point()]


def assert_same(fused, composed, tensors: list[torch.Tensor], seed: int = 0) -> None:
    """Max-norm relative error <= TOL; a tensor that is zero in exact arithmetic (the query
    gradient with one key) is held to 1e-12 absolute instead, its rounding noise ~1e-16."""
    got, want = _run(fused, tensors, seed), _run(composed, tensors, seed)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert (a is None) == (b is None), i
        if a is not None:
            err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
            assert err <= TOL, (i, err, rel_err(a, b))


def rnd(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("param", PAIRS)
@SETTINGS
@given(
    batch=st.integers(1, 3),
    rows=dims,
    fan_in=dims,
    fan_out=dims,
    bias=st.booleans(),
    constraint=st.sampled_from(["to_output_scale", None, "gmean"]),
    readout=st.booleans(),
    mult=st.tuples(mults, mults, mults),
)
def test_linear(param, batch, rows, fan_in, fan_out, bias, constraint, readout, mult):
    new, old = PAIRS[param]
    input_mult, output_mult, grad_input_mult = mult
    tensors = [rnd(batch, rows, fan_in, seed=1), rnd(fan_out, fan_in, seed=2)]
    tensors += [rnd(fan_out, seed=3)] if bias else []

    def fused(x, w, b=None):
        if readout:
            return new.linear_readout(x, w, b)
        return new.linear(x, w, b, constraint, input_mult=input_mult,
                          output_mult=output_mult, grad_input_mult=grad_input_mult)  # fmt: skip

    def composed(x, w, b=None):
        if readout:
            return old.linear_readout(x, w, b)
        x = scale_bwd(scale(x, fwd=input_mult, bwd=input_mult), grad_input_mult)
        return scale_fwd(old.linear(x, w, b, constraint), output_mult)

    assert_same(fused, composed, tensors)


@SETTINGS
@given(m=dims, k=dims, n=dims, scales=st.tuples(mults, mults, mults, mults, mults))
def test_scaled_linear_is_its_formula(m, k, n, scales):
    """The Function alone against its docstring, written with plain autograd ops."""
    out_s, in_s, w_s, b_s, gb_s = scales
    tensors = [rnd(m, k, seed=4), rnd(n, k, seed=5), rnd(n, seed=6)]

    def formula(x, w, b):
        return scale(x, bwd=in_s / out_s) @ scale(w, bwd=w_s / out_s).T * out_s + scale(
            b, fwd=b_s, bwd=gb_s
        )

    assert_same(
        lambda x, w, b: kernels.scaled_linear(x, w, b, out_s, in_s, w_s, b_s, gb_s),
        formula,
        tensors,
    )


@pytest.mark.parametrize("param", PAIRS)
@SETTINGS
@given(
    rows=dims,
    width=dims,
    tau=st.floats(0.05, 3.0),
    affine=st.booleans(),
    layer_norm=st.booleans(),
)
def test_residual_branch(param, rows, width, tau, affine, layer_norm):
    """A pre-norm branch ending in a linear, its weights folded (fork, merge, the linears'
    alphas, the norm's gain) against residual_split/residual_add around it."""
    new, old = PAIRS[param]
    tensors = [rnd(2, rows, width, seed=7), rnd(width, width, seed=8), rnd(width, width, seed=9)]
    tensors += [rnd(width, seed=10) + 1] if affine else []

    def norm(mod, x, gain, **kw):
        if layer_norm:
            return mod.layer_norm(x, (width,), gain, None, **kw)
        return mod.rms_norm(x, (width,), gain, **kw)

    def fused(x, w1, w2, gain=None):
        branch_w, skip_w = new.residual_weights(tau)
        r, skip = new.residual_fork(x, skip_w)
        h = norm(new, r, gain, weight_grad_mult=1 / branch_w)
        h = new.gelu(new.linear(h, w1, None, grad_input_mult=branch_w))
        return new.residual_merge(new.linear(h, w2, None, output_mult=branch_w), skip, skip_w)

    def composed(x, w1, w2, gain=None):
        r, skip = old.residual_split(x, tau)
        h = old.gelu(old.linear(norm(old, r, gain), w1, None))
        return old.residual_add(old.linear(h, w2, None), skip, tau)

    assert_same(fused, composed, tensors)


@pytest.mark.parametrize("param", PAIRS)
@SETTINGS
@given(
    heads=st.integers(1, 3),
    q_len=st.integers(1, 12),
    k_len=st.integers(1, 12),
    d_head=st.sampled_from([2, 4, 8]),
    causal=st.booleans(),
    mult=mults,
)
def test_attention_output_scale_in_projection(param, heads, q_len, k_len, d_head, causal, mult):
    new, old = PAIRS[param]
    causal = causal and q_len == k_len
    width = heads * d_head
    q, k, v = (rnd(2, heads, n, d_head, seed=11 + i) for i, n in enumerate((q_len, k_len, k_len)))
    w = rnd(width, width, seed=14)
    s = U.attention_scale(16, d_head, causal, mult) if param == "umup" else 1.0

    def flat(a):
        return a.transpose(1, 2).reshape(2, q_len, width)

    def fused(q, k, v, w):
        a = new.scaled_dot_product_attention(
            q, k, v, is_causal=causal, mult=mult, scale_len=16, scale_output=False
        )
        return new.linear(flat(a), w, None, input_mult=s)

    def composed(q, k, v, w):
        a = old.scaled_dot_product_attention(q, k, v, is_causal=causal, mult=mult, scale_len=16)
        return old.linear(flat(a), w, None)

    assert_same(fused, composed, [q, k, v, w])


@pytest.mark.parametrize("param", PAIRS)
@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@SETTINGS
@given(rows=dims, width=dims, hidden=st.integers(1, 12), mult=mults)
def test_activation_multipliers_in_projections(param, kind, rows, width, hidden, mult):
    new, old = PAIRS[param]
    parts = 2 if kind == "swiglu" else 1
    constraint = None if kind == "swiglu" else "to_output_scale"
    x, up = rnd(3, rows, width, seed=15), rnd(parts * hidden, width, seed=16)
    down = rnd(width, hidden, seed=17)
    up_mult, down_mult = new.mlp_multipliers(kind, mult)

    def fused(x, up, down):
        h = new.linear(x, up, None, constraint, parts=parts, input_mult=up_mult)
        h = new.mlp_activation(h, kind, mult)
        return new.linear(h, down, None, constraint, input_mult=down_mult)

    def composed(x, up, down):
        h = old.linear(x, up, None, constraint, parts=parts)
        if kind == "swiglu":
            h = old.silu_glu(*h.chunk(2, dim=-1), mult=mult)
        else:
            h = old.gelu(h, mult=mult)
        return old.linear(h, down, None, constraint)

    assert_same(fused, composed, [x, up, down])


@pytest.mark.parametrize("param", PAIRS)
@SETTINGS
@given(
    rows=st.integers(1, 40),
    vocab=st.integers(2, 30),
    width=dims,
    padding=st.booleans(),
    grad_mult=mults,
    data=st.data(),
)
def test_embedding(param, rows, vocab, width, padding, grad_mult, data):
    new, old = PAIRS[param]
    ids = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows)))
    pad = 0 if padding else None
    assert_same(
        lambda w: new.embedding(ids.view(1, -1), w, pad, grad_mult=grad_mult),
        lambda w: old.embedding(ids.view(1, -1), scale_bwd(w, grad_mult), pad),
        [rnd(vocab, width, seed=18)],
    )


@pytest.mark.parametrize("param", PAIRS)
@SETTINGS
@given(
    rows=st.integers(1, 40),
    vocab=st.integers(2, 40),
    reduction=st.sampled_from(["mean", "sum"]),
    mult=mults,
    data=st.data(),
)
def test_cross_entropy(param, rows, vocab, reduction, mult, data):
    """Ignored targets drawn too, all rows ignored included (loss 0, no gradient)."""
    new, old = PAIRS[param]
    target = torch.tensor(
        data.draw(st.lists(st.integers(-1, vocab - 1), min_size=rows, max_size=rows))
    )
    assert_same(
        lambda x: new.cross_entropy(x, target, -1, reduction, mult=mult),
        lambda x: old.cross_entropy(x, target, -1, reduction, mult=mult),
        [rnd(rows, vocab, seed=19) * 3],
    )
