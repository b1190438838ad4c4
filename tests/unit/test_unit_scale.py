"""Unit scale: for unit-normal inputs (and a unit-normal output gradient) each op's output and
gradients have RMS within 10 % of 1 where the op's rule promises it.

Sizes: the reference library's own test sizes first, then three or more others. Cases the rules
do not promise are measured, put in the table, and asserted as what they are:
- ``to_output_scale``/``gmean`` constraints deliberately give up the input-gradient scale
  (``to_output_scale``: input grad RMS = sqrt(fan_out / fan_in); ``gmean``: out * grad = 1).
- ``linear_readout``: output RMS = fan_in**-0.5 (u-μP's readout rule), gradients unit.
- softmax is only unit-scaled at small ``mult`` (the reference tests mult=1/4); at mult=1 its
  empirical model is poor, which the table shows.
- attention: output and value gradient unit (causal: the empirical log(s)/s rule is within
  15 %); query/key gradients ≈ d_head**-0.5.
- GELU/SiLU: the rule makes the output *std* unit; the RMS is up to ~1.2 at mult=4.
Run with ``-s`` to print the table.
"""

from __future__ import annotations

import math

import pytest
import torch
from _unit_helpers import RMS_ROWS, rms

import lit_unitscale.unit.functional as U

TOL = 0.10  # |RMS - target| <= 10 % of target


def measure(op, shape, case, fn, inputs, seed=0):
    """Run ``fn`` on leaf inputs, backprop a unit-normal gradient; record and return RMSs."""
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 99))
    out.backward(g)
    grads = {f"g{i}": rms(t.grad) for i, t in enumerate(leaves) if t.is_floating_point()}
    row = (op, str(shape), case, rms(out), grads)
    RMS_ROWS.append(row)
    return row[3], grads


def close(value, target=1.0, tol=TOL):
    return abs(value - target) <= tol * target


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# Every gradient tensor has >= 160 elements so that the sample RMS (relative sd ~ 1/sqrt(2n)) is
# well inside the 10 % band; all inputs are seeded, so the numbers in the table are reproducible.
LINEAR = [((2**8,), 2**10, 2**12), ((64,), 128, 512), ((1024,), 256, 384), ((32, 7), 96, 160)]


@pytest.mark.parametrize("lead,fan_in,fan_out", LINEAR)
@pytest.mark.parametrize("constraint", [None, "to_output_scale", "gmean"])
def test_linear(lead, fan_in, fan_out, constraint):
    out, g = measure(
        "linear",
        (*lead, fan_in, fan_out),
        f"constraint={constraint}",
        lambda x, w, b: U.linear(x, w, b, constraint=constraint),
        [randn(*lead, fan_in, seed=1), randn(fan_out, fan_in, seed=2), torch.zeros(fan_out)],
    )
    assert close(g["g1"]) and close(g["g2"])  # weight and bias gradients: always unit
    if constraint is None:
        assert close(out) and close(g["g0"])
    elif constraint == "to_output_scale":
        assert close(out) and close(g["g0"], (fan_out / fan_in) ** 0.5)
    else:
        assert close(out * g["g0"])


@pytest.mark.parametrize("lead,fan_in,fan_out", LINEAR)
def test_linear_readout(lead, fan_in, fan_out):
    out, g = measure(
        "linear_readout",
        (*lead, fan_in, fan_out),
        "constraint=None",
        lambda x, w, b: U.linear_readout(x, w, b),
        [randn(*lead, fan_in, seed=3), randn(fan_out, fan_in, seed=4), torch.zeros(fan_out)],
    )
    assert close(out, fan_in**-0.5)
    assert close(g["g0"]) and close(g["g1"]) and close(g["g2"])


MATMUL = [((2**8, 2**10), (2**10, 2**12)), ((64, 256), (256, 32)), ((4, 32, 48), (4, 48, 80))]


@pytest.mark.parametrize("ls,rs", MATMUL)
def test_matmul(ls, rs):
    out, g = measure(
        "matmul",
        f"{ls}@{rs}",
        "constraint=None",
        lambda a, b: U.matmul(a, b, constraint=None),
        [randn(*ls, seed=5), randn(*rs, seed=6)],
    )
    assert close(out) and close(g["g0"]) and close(g["g1"])


EW = [(2**10,), (2**14,), (64, 256), (8, 16, 32)]


@pytest.mark.parametrize("shape", EW)
@pytest.mark.parametrize("mult", [0.25, 1.0, 4.0])
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_gelu_silu(shape, mult, name):
    fn = getattr(U, name)
    out, g = measure(
        name, shape, f"mult={mult} constraint=None",
        lambda x: fn(x, mult=mult, constraint=None), [randn(*shape, seed=7)],
    )  # fmt: skip
    # The rule models the output's standard deviation (GELU/SiLU outputs have a positive mean,
    # so their RMS is above 1 at larger mult); the reference asserts the std, as we do here.
    x = randn(*shape, seed=7)
    std = fn(x, mult=mult, constraint=None).std().item()
    RMS_ROWS[-1][4]["out_std"] = std
    assert close(std) and close(g["g0"])
    assert out < 1.3  # RMS, for the record: 1.0-1.25 across the table


@pytest.mark.parametrize("shape", EW)
@pytest.mark.parametrize("mult", [0.25, 1.0, 4.0])
def test_silu_glu(shape, mult):
    out, g = measure(
        "silu_glu", shape, f"mult={mult}",
        lambda x, y: U.silu_glu(x, y, mult=mult), [randn(*shape, seed=8), randn(*shape, seed=9)],
    )  # fmt: skip
    assert close(out) and close(g["g0"]) and close(g["g1"])


SOFTMAX = [(2**12,), (2**14,), (16, 1024), (2, 2048, 2)]


@pytest.mark.parametrize("shape", SOFTMAX)
@pytest.mark.parametrize("mult", [0.25, 1.0])
def test_softmax(shape, mult):
    dim = max(range(len(shape)), key=lambda d: shape[d])
    out, g = measure(
        "softmax", shape, f"mult={mult} dim={dim}",
        lambda x: U.softmax(x, dim=dim, constraint=None, mult=mult), [randn(*shape, seed=10)],
    )  # fmt: skip
    if mult == 0.25:  # promised (the reference's own test point)
        assert close(out) and close(g["g0"])
    else:  # measured only: the flat/one-hot interpolation is poor at mult=1
        assert 0.5 < out < 2 and 0.5 < g["g0"] < 2


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9, 0.99])
def test_dropout(p):
    torch.manual_seed(0)
    out, g = measure(
        "dropout", (2**20,), f"p={p}", lambda x: U.dropout(x, p), [randn(2**20, seed=11)]
    )
    assert close(out) and close(g["g0"])


NORM = [((2**8,), 2**10), ((64,), 256), ((512,), 384), ((4, 16), 768)]


@pytest.mark.parametrize("lead,dim", NORM)
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_norms(lead, dim, name):
    args = [randn(*lead, dim, seed=12), randn(dim, seed=13)]
    if name == "layer_norm":
        args.append(torch.zeros(dim))
        fn = lambda x, w, b: U.layer_norm(x, (dim,), w, b)
    else:
        fn = lambda x, w: U.rms_norm(x, (dim,), w)
    out, g = measure(name, (*lead, dim), "weight~N(0,1)", fn, args)
    assert close(out) and all(close(v) for v in g.values())


EMB = [((2**4, 2**5), 2**12, 2**6), ((64, 32), 1000, 128), ((8,), 50, 256), ((16, 64), 64, 32)]


@pytest.mark.parametrize("idx_shape,vocab,dim", EMB)
def test_embedding(idx_shape, vocab, dim):
    idx = torch.randint(0, vocab, idx_shape, generator=torch.Generator().manual_seed(14))
    out, g = measure(
        "embedding", f"idx{idx_shape} V={vocab} D={dim}", "uniform ids",
        lambda w: U.embedding(idx, w), [randn(vocab, dim, seed=15)],
    )  # fmt: skip
    # The table gradient is unit in expectation over which ids occur: with few tokens per row
    # the sample RMS is noisier (relative sd ~ 1/sqrt(2 * rows hit * dim)), still well in 10 %.
    assert close(out) and close(g["g0"])


# (batch, seq, d_head): the reference's 2**8 x 2**6 x 2**6 first.
ATTN = [(2**8, 2**6, 2**6), (16, 128, 32), (64, 32, 16), (8, 256, 64)]


@pytest.mark.parametrize("b,s,d", ATTN)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa(b, s, d, causal):
    out, g = measure(
        "sdpa", (b, s, d), f"causal={causal}",
        lambda q, k, v: U.scaled_dot_product_attention(q, k, v, is_causal=causal),
        [randn(b, s, d, seed=16), randn(b, s, d, seed=17), randn(b, s, d, seed=18)],
    )  # fmt: skip
    # Output and value gradient: unit. The causal rule (log(s)/s) is an empirical fit: measured
    # 5-10 % high at these lengths, so causal is held to 15 %.
    tol = 0.15 if causal else TOL
    assert close(out, tol=tol) and close(g["g2"], tol=tol)
    # Query/key gradients are not unit-scaled: they come out near d_head**-0.5 (the reference's
    # own test, with seq == d_head == 64, states it as seq**-0.5); causal ones ~10-20 % lower.
    qk_tol = 0.25 if causal else 0.15
    assert close(g["g0"], d**-0.5, qk_tol) and close(g["g1"], d**-0.5, qk_tol)


@pytest.mark.parametrize("shape", [(2**10,), (64, 256), (16, 1024)])
@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_residual(shape, tau):
    d = shape[-1]
    w = randn(d, d, seed=19)

    def block(x):
        residual, skip = U.residual_split(x, tau)
        residual = U.linear(residual, w, None, constraint=None)
        return U.residual_add(residual, skip, tau)

    out, g = measure("residual", shape, f"tau={tau}", block, [randn(*shape, seed=20)])
    assert close(out) and close(g["g0"])


@pytest.mark.parametrize("rows,vocab", [(2**12, 2**8), (1024, 32), (256, 4096), (2048, 1000)])
def test_cross_entropy(rows, vocab):
    x = randn(rows, vocab, seed=21).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(22))
    loss = U.cross_entropy(x, t)
    loss.backward()
    RMS_ROWS.append(("cross_entropy", str((rows, vocab)), "mean", loss.item(), {"g0": rms(x.grad)}))
    assert close(rms(x.grad))
    assert math.isclose(loss.item(), torch.nn.functional.cross_entropy(x, t).item(), rel_tol=1e-6)
