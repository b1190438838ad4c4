"""Real FP8 linears (``matmul="fp8"``): ``torch._scaled_mm`` with static unit scales computes
what the FP8 simulation computes, saves FP8 casts for backward, and runs three FP8 GEMMs per
hidden linear in a training step — none for embeddings, readouts or attention's products.

Oracle: the simulation (:func:`lit_unitscale.unit.fp8.fp8_matmuls`), which rounds with
``quantise`` and multiplies with ``F.linear`` in fp32 — no code shared with the ``_scaled_mm``
path but the format constants. Both round the same operands and accumulate in fp32, so they
differ by fp32 summation order only, which is bounded by the sum of the terms' magnitudes (the
same op on ``|x|``, ``|w|``, ``|g|``): 1e-6 of that, where observed differences stay below
3e-7 of it."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lit_unitscale.unit.functional as U
import lit_unitscale.unit.standard as S
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import Linear, LinearReadout, fp8, simulate_fp8_matmuls, use_fp8_matmuls
from lit_unitscale.unit.kernels import FP8Gemm

RTOL = 1e-6


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _magnitudes(ops, x, w, b, g, kwargs):
    """The op on absolute values: each result's sum of term magnitudes, no cancellation."""
    leaves = [t.detach().abs().requires_grad_() if t is not None else None for t in (x, w, b)]
    return _run(ops, True, *leaves, g.abs(), kwargs)


def _within(got, want, magnitude) -> float:
    return ((got - want).abs().max() / magnitude.abs().max().clamp_min(1e-30)).item()


def _run(ops, real: bool, x, w, b, g, mults):
    leaves = [t for t in (x, w, b) if t is not None]
    for t in leaves:
        t.grad = None
    if real:
        y = ops.linear(x, w, b, matmul="fp8", **mults)
    else:
        with fp8.fp8_matmuls():
            y = ops.linear(x, w, b, **mults)
    y.backward(g)
    return [y.detach(), *(t.grad.clone() for t in leaves)]


def _draw_linear(gen, lead, fan_in, fan_out, bias, umup):
    x = torch.randn(*lead, fan_in, generator=gen, requires_grad=True)
    # SP weights are small (torch's default init scale): the no-scale cast loses them to
    # FP8's subnormals, which is the point of comparing, and both paths must lose them alike.
    w = torch.randn(fan_out, fan_in, generator=gen) * (1.0 if umup else fan_in**-0.5)
    w.requires_grad_()
    b = torch.randn(fan_out, generator=gen, requires_grad=True) if bias else None
    g = torch.randn(*lead, fan_out, generator=gen)
    return x, w, b, g


SHAPES = dict(
    lead=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    fan_in=st.integers(1, 48),
    fan_out=st.integers(1, 48),
    bias=st.booleans(),
    umup=st.booleans(),
    seed=st.integers(0, 2**16),
)
NAMES = ["output", "grad input", "grad weight", "grad bias"]


@settings(max_examples=40, deadline=None)
@given(**SHAPES, mults=st.tuples(*[st.sampled_from([1.0, 0.5, 1.7]) for _ in range(2)]))
def test_real_fp8_linear_equals_the_simulation(lead, fan_in, fan_out, bias, umup, seed, mults):
    x, w, b, g = _draw_linear(
        torch.Generator().manual_seed(seed), lead, fan_in, fan_out, bias, umup
    )
    ops = U if umup else S
    kwargs = dict(zip(("output_mult", "grad_input_mult"), mults, strict=True))
    real = _run(ops, True, x, w, b, g, kwargs)
    sim = _run(ops, False, x, w, b, g, kwargs)
    sizes = _magnitudes(ops, x, w, b, g, kwargs)
    for got, want, size, what in zip(real, sim, sizes, NAMES[: len(real)], strict=True):
        assert _within(got, want, size) <= RTOL, what


@settings(max_examples=20, deadline=None)
@given(**SHAPES, mult=st.sampled_from([0.5, 1.7, 0.3]))
def test_an_input_multiplier_rides_in_the_scales(lead, fan_in, fan_out, bias, umup, seed, mult):
    # The input is cast as it arrives and the multiplier scales the products: output and
    # both matmul gradients are ``mult`` times those without it, the bias's unchanged.
    x, w, b, g = _draw_linear(
        torch.Generator().manual_seed(seed), lead, fan_in, fan_out, bias, umup
    )
    ops = U if umup else S
    with_mult = _run(ops, True, x, w, b, g, {"input_mult": mult})
    plain = _run(ops, True, x, w, b, g, {})
    sizes = _magnitudes(ops, x, w, b, g, {"input_mult": mult})
    if b is not None:
        # The bias is added after the scaled product: compare the product alone.
        with_mult[0], plain[0] = with_mult[0] - b.detach(), plain[0] - b.detach()
    factors = [mult, mult, mult, 1.0][: len(plain)]
    for got, want, factor, size, what in zip(with_mult, plain, factors, sizes, NAMES, strict=False):
        assert _within(got, factor * want, size) <= RTOL, what


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 999))
def test_padding_to_cuda_alignment_changes_nothing(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    a = FP8Gemm.cast(torch.randn(m, k, generator=gen), fp8.E4M3)
    b = FP8Gemm.cast(torch.randn(n, k, generator=gen), fp8.E4M3).t()  # column-major, as w.T
    plain = FP8Gemm(align=False).mm(a, b, 0.25, torch.float32)
    aligned = FP8Gemm(align=True).mm(a, b, 0.25, torch.float32)
    assert aligned.shape == (m, n)
    assert torch.equal(plain, aligned)


def test_casts_saturate_and_keep_nan():
    x = torch.tensor([1e6, -1e6, float("nan"), 3.0])
    for fmt in (fp8.E4M3, fp8.E5M2):
        cast = FP8Gemm.cast(x, fmt).float()
        assert cast[:2].tolist() == [fmt.max_value, -fmt.max_value]
        assert torch.isnan(cast[2]) and cast[3] == 3.0


def test_backward_keeps_fp8_casts_not_the_wide_tensors():
    saved = []

    def pack(t):
        saved.append(t.dtype)
        return t

    x = torch.randn(8, 32, requires_grad=True)
    layer = Linear(32, 16)
    layer.matmul = "fp8"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert saved == [torch.float8_e4m3fn, torch.float8_e4m3fn]


def test_runs_on_the_meta_device_with_cuda_shape_rules():
    # Meta's _scaled_mm checks shapes as CUDA does (dimensions multiples of 16): a width of 24
    # passes only because operands are padded.
    x = torch.empty(3, 5, 24, device="meta", requires_grad=True)
    w = torch.empty(40, 24, device="meta", requires_grad=True)
    y = U.linear(x, w, None, matmul="fp8")
    y.sum().backward()
    assert y.shape == (3, 5, 40) and x.grad.shape == x.shape and w.grad.shape == w.shape


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
@pytest.mark.parametrize("exclude", [(), ("*.layers.0.*",)], ids=["all", "first-block-excluded"])
def test_training_step_runs_three_fp8_gemms_per_hidden_linear(parametrization, exclude):
    config = TransformerConfig(
        vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=16,
        parametrization=parametrization, mlp="gelu", positions="rope",
    )  # fmt: skip
    model = DecoderLM(config)
    chosen = use_fp8_matmuls(model, exclude=exclude)
    hidden = [n for n, m in model.named_modules() if type(m) is Linear]
    assert all(isinstance(m, Linear) for m in model.modules() if getattr(m, "matmul", None))
    assert not any(m.matmul for m in model.modules() if isinstance(m, LinearReadout))
    expected = [n for n in hidden if not (exclude and ".layers.0." in f".{n}.")]
    assert sorted(chosen) == sorted(expected) and chosen
    ids = torch.randint(0, 97, (2, 16))
    with _Count() as count:
        model.loss(model(ids), ids).backward()
    assert count.counts["_scaled_mm"] == 3 * len(chosen)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_training_step_equals_eager_without_graph_breaks():
    # Inductor lowers _scaled_mm only with a column-major right operand (as CUDA needs): the
    # layout the FP8 GEMM always gives it. Tolerance 1e-5 relative to each gradient's largest
    # value (measured 1.3e-7: the fused casts and adds sum in another order).
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=16,
        positions="rope", mlp="gelu",
    )  # fmt: skip
    model = DecoderLM(config)
    use_fp8_matmuls(model)
    ids = torch.randint(0, 97, (2, 16))

    def step(m):
        for p in model.parameters():
            p.grad = None
        loss = m.loss(m(ids), ids)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    explained = torch._dynamo.explain(lambda x: model.loss(model(x), x))(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True))
    assert _relative(compiled_loss, eager_loss) <= 1e-5
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        assert _relative(got, want) <= 1e-5


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_simulation_carried_by_the_modules_equals_the_region_flag(parametrization, tied, mlp):
    # The FP8 simulation set on the modules (what the precision plugin does) rounds exactly
    # the operands the fp8_matmuls() region rounds: bit for bit, outputs and gradients.
    config = TransformerConfig(
        vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, mlp=mlp,
        parametrization=parametrization, tie_embeddings=tied, positions="rope",
    )  # fmt: skip
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))

    def step(model, region: bool):
        with fp8.fp8_matmuls() if region else contextlib.nullcontext():
            logits = model(ids)
            model.loss(logits, ids).backward()
        return [logits.detach(), *(p.grad for p in model.parameters())]

    torch.manual_seed(0)
    by_region = step(DecoderLM(config), region=True)
    torch.manual_seed(0)
    model = DecoderLM(config)
    names = simulate_fp8_matmuls(model)
    assert any(".attn" in n and n.endswith("attn") for n in names) and "head" in names
    by_module = step(model, region=False)
    for a, b in zip(by_module, by_region, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    plain = step(DecoderLM(config), region=False)
    assert not torch.equal(plain[0], by_module[0]), "the simulation changed nothing"
