"""FP8 simulation: formats, rounding, saturation, and the fp8_matmuls() context."""

from __future__ import annotations

import pytest
import torch
from _unit_helpers import rnd
from unit_scaling.formats import FPFormat

import lit_unitscale.unit.functional as U
from lit_unitscale.unit import fp8
from lit_unitscale.unit.fp8 import E4M3, E5M2, quantise

FMTS = [E4M3, E5M2]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def on_grid(x: torch.Tensor, fmt) -> bool:
    """Every element is an FP8 value of ``fmt`` (the round trip through torch's dtype is exact)."""
    x32 = x.detach().float()
    finite = torch.isfinite(x32)
    back = x32[finite].to(fmt.dtype).float()
    return bool(torch.equal(back, x32[finite]))


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
def test_format_constants_match_torch_finfo(fmt):
    fi = torch.finfo(fmt.dtype)
    assert fmt.max_value == fi.max
    assert fmt.min_normal == fi.smallest_normal
    # smallest subnormal: the value with only the last mantissa bit set
    smallest = torch.tensor([1], dtype=torch.uint8).view(fmt.dtype).float().item()
    assert fmt.min_subnormal == smallest


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantise_exact_on_representable_values_and_idempotent(fmt, dtype):
    # All 256 bit patterns of the format, finite ones only.
    every = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).float()
    every = every[torch.isfinite(every)]
    values = every.to(dtype)
    assert torch.equal(values.float(), every)  # FP8 values are exact in fp16/bf16
    assert torch.equal(quantise(values, fmt), values)
    x = rnd(4096, seed=1, dtype=dtype) * 30
    once = quantise(x, fmt)
    assert once.dtype == dtype
    assert torch.equal(quantise(once, fmt), once)
    assert on_grid(once, fmt)


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantise_equals_torch_float8_cast_from_fp32(fmt, dtype):
    """Deliberate difference (b), ours: bf16/fp16 inputs quantise exactly as the same values
    cast through torch's float8 dtype from fp32."""
    x = (rnd(8192, seed=2) * torch.logspace(-6, 2, 8192)).to(dtype)
    expected = x.float().clamp(-fmt.max_value, fmt.max_value).to(fmt.dtype).float().to(dtype)
    got = quantise(x, fmt)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reference_fpformat_corrupts_half_precision(dtype):
    """Deliberate difference (b), reference: ``FPFormat.quantise`` bit-casts the *original*
    16-bit tensor to int32 (its fp32 copy is discarded), so bf16/fp16 inputs come back with the
    wrong shape (pairs of elements merged) and wrong values. Ours (above) is exact."""
    ref = FPFormat(5, 2, rounding="nearest")
    x = torch.tensor([1.0, 1.25, 3.0, -2.5, 0.09375, 7.0], dtype=dtype)  # all exact in E5M2
    assert torch.equal(ref.quantise(x.float()), x.float())  # fp32 is fine
    got = ref.quantise(x)
    assert got.shape != x.shape or not torch.equal(got, x)
    assert torch.equal(quantise(x, E5M2), x)


# Ties: values exactly halfway between two neighbours; nearest-even picks the even mantissa.
TIES = {
    # E4M3 near 1: spacing 1/8. 1.0625 between 1.0 (even) and 1.125 (odd) -> 1.0;
    # 1.1875 between 1.125 (odd) and 1.25 (even) -> 1.25; 17 between 16 (even) and 18 -> 16;
    # 19 between 18 (odd) and 20 (even) -> 20; 2**-10 (half the min subnormal) -> 0;
    # 3 * 2**-10 between 2**-9 (odd) and 2**-8 (even) -> 2**-8; 432 between 416 (odd), 448 -> 448.
    "e4m3": [
        (1.0625, 1.0),
        (1.1875, 1.25),
        (17.0, 16.0),
        (19.0, 20.0),
        (2**-10, 0.0),
        (3 * 2**-10, 2**-8),
        (432.0, 448.0),
        (-1.0625, -1.0),
        (-19.0, -20.0),
    ],
    # E5M2 near 1: spacing 1/4. 1.125 -> 1.0; 1.375 -> 1.5; 2.25 -> 2.0; 2.75 -> 3.0;
    # 2**-17 (half the min subnormal) -> 0; 3 * 2**-17 -> 2**-15; 53248 between 49152
    # (mantissa 10, even) and 57344 (mantissa 11, odd) -> 49152; 45056 between 40960 (01)
    # and 49152 (10) -> 49152.
    "e5m2": [
        (1.125, 1.0),
        (1.375, 1.5),
        (2.25, 2.0),
        (2.75, 3.0),
        (2**-17, 0.0),
        (3 * 2**-17, 2**-15),
        (53248.0, 49152.0),
        (45056.0, 49152.0),
        (-1.375, -1.5),
    ],
}


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_to_nearest_ties_to_even(fmt, dtype):
    """Deliberate difference (c): hand-picked ties round to the even neighbour."""
    pairs = TIES[fmt.name]
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    expected = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    if dtype is torch.float16:
        keep = x.abs() >= 2**-24  # fp16 cannot hold every tiny tie; those are fp32/bf16 only
        x, expected = x[keep], expected[keep]
    assert torch.equal(x.to(dtype).float(), x)  # the tie itself is exact in ``dtype``
    assert torch.equal(quantise(x.to(dtype), fmt).float(), expected)


def test_e4m3_saturates():
    x = torch.tensor([448.0, 449.0, 464.0, 1e6, float("inf"), -500.0, -float("inf")])
    got = quantise(x, E4M3)
    assert torch.equal(got, torch.tensor([448.0, 448, 448, 448, 448, -448, -448]))
    assert torch.equal(quantise(x, E4M3, saturate=False), got)  # E4M3 has no inf


def test_e5m2_overflows_without_saturate_and_saturates_with():
    x = torch.tensor([57344.0, 61439.0, 61440.0, 1e6, -1e6])
    no_sat = quantise(x, E5M2, saturate=False)
    # 61439 is below the midpoint to the next binade and rounds to max; 61440 and above -> inf.
    inf = float("inf")
    assert torch.equal(no_sat, torch.tensor([57344.0, 57344.0, inf, inf, -inf]))
    sat = quantise(x, E5M2, saturate=True)
    assert torch.equal(sat, torch.tensor([57344.0, 57344, 57344, 57344, -57344]))


def test_nan_stays_nan():
    x = torch.tensor([float("nan"), 1.0])
    for fmt in FMTS:
        for rounding in ("nearest", "stochastic"):
            q = quantise(x, fmt, rounding=rounding)
            assert torch.isnan(q[0]) and q[1] == 1.0


# (value, lower neighbour, upper neighbour) for each format, including the subnormal range and
# values just below a power of two.
SR_CASES = {
    "e4m3": [
        (1.03, 1.0, 1.125),
        (-5.3, -5.0, -5.5),
        (0.0021, 2**-9, 2**-8),
        (1.99999988, 1.875, 2.0),
    ],
    "e5m2": [
        (1.1, 1.0, 1.25),
        (-300.0, -256.0, -320.0),
        (3e-5, 2**-16, 2**-15),
        (4e-5, 2**-15, 3 * 2**-16),
    ],
}


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_stochastic_rounding_unbiased_and_only_neighbours(fmt, dtype):
    n = 200_000
    gen = torch.Generator().manual_seed(5)
    for value, lo, hi in SR_CASES[fmt.name]:
        v = torch.tensor(value, dtype=dtype)
        lo_t, hi_t = sorted((lo, hi))
        x = v.expand(n).clone()
        q = quantise(x, fmt, rounding="stochastic", generator=gen).float()
        assert set(q.unique().tolist()) <= {lo, hi}, (value, q.unique())
        # Unbiased: the mean is within 4 standard errors of the value. Rounding up is a
        # Bernoulli(p) times the gap, so sigma of the mean is gap * sqrt(p (1 - p) / n).
        exact = v.float().item()
        gap = hi_t - lo_t
        p = (exact - lo_t) / gap
        sigma = gap * (p * (1 - p) / n) ** 0.5
        assert abs(q.mean().item() - exact) <= 4 * sigma + 1e-12, (value, q.mean().item())


def test_stochastic_rounding_exact_values_stay_exact():
    every = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    every = every[torch.isfinite(every)].repeat(200)
    assert torch.equal(quantise(every, E4M3, rounding="stochastic"), every)


def test_out_of_range_fractions():
    x = torch.tensor([0.0, 1e-4, 1.0, 500.0, -1e5, 2.0, 0.001, 3.0])
    under, over = fp8.out_of_range_fractions(x, E4M3)
    assert under.item() == pytest.approx(2 / 8)  # 1e-4 and 1e-3 below 2**-6
    assert over.item() == pytest.approx(2 / 8)  # 500 and -1e5
    under, over = fp8.out_of_range_fractions(x, E5M2)
    assert under.item() == pytest.approx(0.0) and over.item() == pytest.approx(1 / 8)


# --- fp8_matmuls() -------------------------------------------------------------------------------


class _Capture(torch.autograd.Function):
    """Identity that records the gradient flowing through it."""

    store: dict = {}

    @staticmethod
    def forward(ctx, x, key):
        ctx.key = key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _Capture.store[ctx.key] = g.detach().clone()
        return g, None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_matmuls_quantise_linear_inputs_and_output_grad(dtype, monkeypatch):
    x = rnd(16, 32, seed=7, dtype=dtype).requires_grad_()
    w = rnd(24, 32, seed=8, dtype=dtype).requires_grad_()
    seen = {}
    real_linear = torch.nn.functional.linear

    def spy(inp, weight, bias=None):
        seen["input"], seen["weight"] = inp.detach(), weight.detach()
        out = real_linear(inp, weight, bias)
        return _Capture.apply(out, "out_grad")

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    g = rnd(16, 24, seed=9, dtype=dtype) * 3
    with fp8.fp8_matmuls():
        y = U.linear(x, w, None)
    y.backward(g)
    # Forward: the matmul saw E4M3 values (and they really differ from the raw inputs).
    assert on_grid(seen["input"], E4M3) and on_grid(seen["weight"], E4M3)
    assert not torch.equal(seen["input"], x.detach())
    assert torch.equal(seen["input"], quantise(x.detach(), E4M3))
    # Backward: the gradient reaching the matmul output is the E5M2 quantisation of the
    # incoming gradient (the forward output scale does not touch the gradient).
    out_grad = _Capture.store["out_grad"]
    assert out_grad.dtype == dtype
    assert on_grid(out_grad, E5M2)
    assert torch.equal(out_grad, quantise(g, E5M2))
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # Off again outside the context.
    monkeypatch.setattr(torch.nn.functional, "linear", real_linear)
    assert not fp8.fp8_enabled()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_matmuls_results_close_to_full_precision(dtype):
    # A unit-scaled linear in FP8 is close to full precision: E4M3 has a 2**-4 relative step,
    # so the output of a 64-wide dot product stays within a few % RMS.
    x = rnd(64, 64, seed=10, dtype=dtype)
    w = rnd(64, 64, seed=11, dtype=dtype)
    full = U.linear(x.float(), w.float(), None)
    with fp8.fp8_matmuls():
        low = U.linear(x, w, None).float()
    rel = (low - full).pow(2).mean().sqrt() / full.pow(2).mean().sqrt()
    assert rel.item() < 0.06


def test_fp8_matmuls_context_restores_and_can_be_disabled():
    assert not fp8.fp8_enabled()
    with fp8.fp8_matmuls():
        assert fp8.fp8_enabled()
        with fp8.fp8_matmuls(enabled=False):
            assert not fp8.fp8_enabled()
        assert fp8.fp8_enabled()
    assert not fp8.fp8_enabled()
