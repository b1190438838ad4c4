"""The one-pass statistics equal the per-statistic formulas they replace, element for element,
and the sampling of large tensors is unbiased with integer counts that add up to the tensor.

The oracle below shares no code with :func:`tensor_stats`: one elementwise pass per statistic
(square and sum, ``isfinite``, range comparisons on ``|x|``) and ``torch.frexp`` for exponents.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.callbacks.scale_stats import (
    HIST_BINS,
    HIST_MAX_EXP,
    HIST_MIN_EXP,
    fields,
    histogram,
    resolve_formats,
    summarise,
    summary_fields,
    tensor_stats,
)

FORMATS = resolve_formats(["e4m3", "e5m2", "fp16"])
# Values on and beside every boundary the statistics draw: powers of two near the formats'
# smallest normals, the formats' maxima, the histogram's clamps, and fp32's own extremes.
EDGES = [0.0, 2.0**-149, 2.0**-126, 2.0**-41, 2.0**-40, 2.0**-14, 2.0**-6, 1.0, 448.0,
         2.0**19, 2.0**20, 2.0**21, 57344.0, 65504.0, 3.4e38, math.inf, math.nan]  # fmt: skip


@pytest.fixture(autouse=True)
def keep_subnormals():
    """Compare with subnormals seen as the non-zero values they are: training sets the CPU to
    treat them as zero (tasks flush denormals), which would blind the oracle's comparisons but
    not the bit patterns the statistics read. The previous setting is restored."""
    flushing = not bool(torch.tensor(2.0**-149) > 0)
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)


def oracle(x: torch.Tensor) -> dict:
    x = x.float()
    mag = x.abs()
    out = {"sumsq": float(x.square().sum()), "count": x.numel()}
    out["nonfinite"] = int((~torch.isfinite(x)).sum())
    for fmt in FORMATS:
        out[f"underflow_{fmt.name}"] = int(((mag > 0) & (mag < fmt.min_normal)).sum())
        out[f"overflow_{fmt.name}"] = int((mag > fmt.max_value).sum())
    out["zeros"] = int((x == 0).sum())
    seen = x[torch.isfinite(x) & (x != 0)]
    exp = torch.frexp(seen).exponent.long() - 1  # floor(log2 |x|)
    exp = exp.clamp(HIST_MIN_EXP, HIST_MAX_EXP) - HIST_MIN_EXP
    out["hist"] = torch.bincount(exp, minlength=HIST_BINS).tolist()
    return out


def _nearby(v: float) -> list[float]:
    f, inf = np.float32(v), np.float32(np.inf)
    return [float(np.nextafter(f, -inf)), v, float(np.nextafter(f, inf))]


EDGE_VALUES = sorted({w for v in EDGES for w in _nearby(v) if not math.isnan(v)} | {math.nan})


def _as_dict(s: torch.Tensor) -> dict:
    got = dict(zip(fields(FORMATS), s.tolist(), strict=True))
    zeros, hist = histogram(s, FORMATS)
    got["zeros"], got["hist"] = zeros.item(), hist.tolist()
    return got


values = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_VALUES).flatmap(lambda v: st.sampled_from([v, -v])),
)


@settings(max_examples=150, deadline=None)
@given(xs=st.lists(values, min_size=1, max_size=64))
def test_counts_are_exact_and_rms_matches(xs):
    x = torch.tensor(xs, dtype=torch.float32)
    want, got = oracle(x), _as_dict(tensor_stats(x, FORMATS))
    for key in [k for k in want if k not in ("sumsq", "hist")]:
        assert got[key] == want[key], key
    assert got["hist"] == want["hist"]
    if math.isfinite(want["sumsq"]) and want["sumsq"] > 0:
        assert got["sumsq"] == pytest.approx(want["sumsq"], rel=2e-6)  # RMS to 1e-6
    elif want["sumsq"] == 0:
        assert got["sumsq"] == 0
    else:  # inf or NaN stays non-finite
        assert not math.isfinite(got["sumsq"])
    # Every element lands in exactly one place.
    assert sum(got["hist"]) + got["zeros"] + got["nonfinite"] == len(xs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1e-5, 1.0, 300.0])
def test_real_sized_tensors_of_every_dtype(dtype, scale):
    x = (torch.randn(257, 1031, generator=torch.Generator().manual_seed(0)) * scale).to(dtype)
    want, got = oracle(x), _as_dict(tensor_stats(x, FORMATS))
    for key in [k for k in want if k not in ("sumsq",)]:
        assert got[key] == want[key], key
    rms_want = math.sqrt(want["sumsq"] / want["count"])
    rms = summarise(tensor_stats(x, FORMATS), FORMATS)[summary_fields(FORMATS).index("rms")]
    assert float(rms) == pytest.approx(rms_want, rel=1e-6)


def test_sampled_counts_are_integers_that_add_up_and_small_tensors_stay_exact():
    x = torch.randn(10_007, generator=torch.Generator().manual_seed(1)) * 0.01
    x[::97] = 0.0
    exact = tensor_stats(x, FORMATS)
    assert torch.equal(tensor_stats(x, FORMATS, max_elements=x.numel()), exact)
    s = tensor_stats(x, FORMATS, max_elements=1000, generator=torch.Generator().manual_seed(3))
    zeros, hist = histogram(s, FORMATS)
    assert s[1] == x.numel()  # the element count is exact
    assert float(zeros + hist.sum() + s[2]) == x.numel()
    assert torch.equal(s[1:], s[1:].round())  # counts, not the sum of squares
    # Seeded: the same generator state gives the same sample.
    again = tensor_stats(x, FORMATS, max_elements=1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s, again)


def test_sampling_is_unbiased():
    # Mean over seeds of the sampled sums equals the exact sums within 4 standard errors of
    # that mean (the spread across seeds gives the error), for sumsq, a share and a histogram bin.
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(6000, generator=gen) * 0.01, torch.randn(4013, generator=gen) * 200])
    exact = tensor_stats(x, FORMATS)
    draws = torch.stack(
        [
            tensor_stats(x, FORMATS, max_elements=500, generator=torch.Generator().manual_seed(s))
            for s in range(400)
        ]
    )
    start = len(fields(FORMATS)) - HIST_BINS
    for i in [0, 3, 4, start + (-7 - HIST_MIN_EXP)]:  # sumsq, e4m3 shares, bin 2**-7
        mean, se = draws[:, i].mean(), draws[:, i].std() / math.sqrt(len(draws))
        assert se > 0
        assert abs(float(mean - exact[i])) < 4 * float(se), fields(FORMATS)[i]
