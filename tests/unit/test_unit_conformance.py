"""Our unit-scaled ops against the reference library ``unit_scaling`` 0.3.5 (the oracle).

Tolerance: outputs and every input/weight gradient agree within 1e-5 max-norm relative error in
fp32 (``max|ours - ref| / max|ref|``), for every constraint an op takes. Deliberate differences
have their own tests at the end of this file.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import unit_scaling.functional as R
from _unit_helpers import compare, forward_backward, leaves, rel_err, rnd
from unit_scaling.core.functional import transformer_residual_scaling_rule
from unit_scaling.scale import scale_bwd as ref_scale_bwd

import lit_unitscale.unit.functional as U

TOL = 1e-5
CONSTRAINTS = ["to_output_scale", "gmean", None]


def ref_constraint(c):
    # The reference spells "no constraint" only as None; ours also accepts "none".
    return None if c in (None, "none") else c


# --- linear / linear_readout / matmul ------------------------------------------------------

LINEAR_SHAPES = [((8,), 16, 32), ((4, 5), 24, 40), ((3,), 64, 7), ((2, 3, 4), 12, 12)]


def ref_with_bias(ref_op):
    """Named difference: our bias is added to the unit-scaled product unscaled (the reference
    scales it with the product, so a bias's effect shrinks as fan_in^-0.5); its gradient
    scale, ``batch^-0.5``, is the reference's."""

    def op(x, w, b=None, **kwargs):
        out = ref_op(x, w, None, **kwargs)
        if b is None:
            return out
        return out + ref_scale_bwd(b, (x.numel() // w.shape[1]) ** -0.5)

    return op


@pytest.mark.parametrize("lead,fan_in,fan_out", LINEAR_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS + ["none"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear(lead, fan_in, fan_out, constraint, bias):
    x, w, b = rnd(*lead, fan_in, seed=1), rnd(fan_out, fan_in, seed=2), rnd(fan_out, seed=3)
    inputs = [x, w, b] if bias else [x, w]
    shape = f"x{(*lead, fan_in)} w{(fan_out, fan_in)}"
    compare(
        "linear",
        shape,
        lambda x, w, b=None: U.linear(x, w, b, constraint=constraint),
        lambda x, w, b=None: ref_with_bias(R.linear)(
            x, w, b, constraint=ref_constraint(constraint)
        ),
        inputs,
        TOL,
    )


@pytest.mark.parametrize("lead,fan_in,fan_out", LINEAR_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_readout(lead, fan_in, fan_out, constraint, bias):
    x, w, b = rnd(*lead, fan_in, seed=4), rnd(fan_out, fan_in, seed=5), rnd(fan_out, seed=6)
    inputs = [x, w, b] if bias else [x, w]
    compare(
        "linear_readout",
        f"x{(*lead, fan_in)} w{(fan_out, fan_in)}",
        lambda x, w, b=None: U.linear_readout(x, w, b, constraint=constraint),
        lambda x, w, b=None: ref_with_bias(R.linear_readout)(x, w, b, constraint=constraint),
        inputs,
        TOL,
    )


MATMUL_SHAPES = [((8, 16), (16, 32)), ((2, 3, 5, 7), (2, 3, 7, 4)), ((4, 9, 6), (6, 11))]


@pytest.mark.parametrize("ls,rs", MATMUL_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS + ["none"])
def test_matmul(ls, rs, constraint):
    compare(
        "matmul",
        f"{ls}@{rs}",
        lambda a, b: U.matmul(a, b, constraint=constraint),
        lambda a, b: R.matmul(a, b, constraint=ref_constraint(constraint)),
        [rnd(*ls, seed=7), rnd(*rs, seed=8)],
        TOL,
    )


# --- attention -------------------------------------------------------------------------------

# (batch, heads, q_len, k_len, d_head)
ATTN_CASES = {
    "causal": [(2, 4, 16, 16, 8), (1, 2, 33, 33, 16), (3, 1, 5, 5, 4)],
    "non-causal": [(2, 4, 16, 16, 8), (1, 3, 20, 20, 32), (2, 2, 7, 7, 4)],
    "cross": [(2, 3, 7, 13, 8), (1, 2, 16, 5, 16), (2, 1, 1, 9, 4)],
    "key-padding": [(2, 4, 12, 12, 8), (3, 2, 6, 10, 16)],
    "additive-mask": [(2, 2, 9, 9, 8)],
}


def _attn_mask(kind, b, q_len, k_len):
    if kind == "key-padding":
        # Each batch row keeps a different prefix of keys (at least one key stays visible).
        lengths = torch.tensor([max(1, k_len - 3 * i) for i in range(b)])
        return (torch.arange(k_len)[None, :] < lengths[:, None])[:, None, None, :]
    if kind == "additive-mask":
        return rnd(1, 1, q_len, k_len, seed=99)  # e.g. a relative position bias
    return None


@pytest.mark.parametrize("kind,shape", [(k, s) for k, shapes in ATTN_CASES.items() for s in shapes])
@pytest.mark.parametrize("mult", [1.0, 0.5, 3.0])
def test_scaled_dot_product_attention(kind, shape, mult):
    b, h, q_len, k_len, d = shape
    q, k, v = (
        rnd(b, h, q_len, d, seed=10),
        rnd(b, h, k_len, d, seed=11),
        rnd(b, h, k_len, d, seed=12),
    )
    mask = _attn_mask(kind, b, q_len, k_len)
    causal = kind == "causal"
    compare(
        f"sdpa[{kind}]",
        f"q{(b, h, q_len, d)} k{(b, h, k_len, d)}",
        lambda q, k, v: U.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, mult=mult
        ),
        lambda q, k, v: R.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, mult=mult
        ),
        [q, k, v],
        TOL,
    )


@pytest.mark.parametrize("kind,shape", [(k, s) for k, shapes in ATTN_CASES.items() for s in shapes])
def test_sdpa_scale_len_equal_to_key_count_is_the_reference(kind, shape):
    """Models fix the scale with ``scale_len``; where it equals the key count the op is the
    reference's, exactly."""
    b, h, q_len, k_len, d = shape
    q, k, v = (rnd(b, h, n, d, seed=s) for n, s in ((q_len, 40), (k_len, 41), (k_len, 42)))
    mask, causal = _attn_mask(kind, b, q_len, k_len), kind == "causal"
    compare(
        f"sdpa[{kind}, scale_len]",
        f"q{(b, h, q_len, d)} k{(b, h, k_len, d)}",
        lambda q, k, v: U.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale_len=k_len
        ),
        lambda q, k, v: R.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal),
        [q, k, v],
        TOL,
    )


def test_difference_sdpa_padding_and_prefix_do_not_change_the_output():
    """Named difference: the reference scales by the runtime key count, padded keys included,
    so padding a sentence or appending tokens changes earlier outputs; with a fixed
    ``scale_len`` ours does not (masked keys count for nothing). Also: is_causal together with
    a mask keeps the causal rule (torch refuses the pair; the mask is folded in)."""
    q, k, v = (rnd(1, 2, 12, 8, seed=s) for s in (43, 44, 45))
    keep = torch.arange(12) < 7
    mask = keep[None, None, None, :].expand(1, 2, 12, 12)
    short = U.scaled_dot_product_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], scale_len=16)
    padded = U.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale_len=16)
    torch.testing.assert_close(padded[:, :, :7], short, rtol=1e-6, atol=1e-6)
    ref_short = R.scaled_dot_product_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7])
    ref_padded = R.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert rel_err(ref_padded[:, :, :7], ref_short) > 0.1  # the reference moves by >10 %
    full = U.scaled_dot_product_attention(q, k, v, is_causal=True, scale_len=16)
    prefix = U.scaled_dot_product_attention(
        q[:, :, :5], k[:, :, :5], v[:, :, :5], is_causal=True, scale_len=16
    )
    torch.testing.assert_close(full[:, :, :5], prefix, rtol=1e-6, atol=1e-6)
    bias = rnd(1, 1, 12, 12, seed=46)
    with_mask = U.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=True)
    ref = R.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=bias.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf")),
        is_causal=False,
    )
    causal_rule = U.attention_scale(12, 8, is_causal=True) / U.attention_scale(12, 8, False)
    torch.testing.assert_close(with_mask, ref * causal_rule, rtol=1e-5, atol=1e-6)


def test_sdpa_dropout_same_seed():
    q, k, v = rnd(2, 2, 12, 8, seed=13), rnd(2, 2, 12, 8, seed=14), rnd(2, 2, 12, 8, seed=15)

    def seeded(fn):
        def run(q, k, v):
            torch.manual_seed(7)
            return fn(q, k, v, dropout_p=0.25, is_causal=True)

        return run

    compare(
        "sdpa[dropout 0.25, seeded]",
        "q(2, 2, 12, 8)",
        seeded(U.scaled_dot_product_attention),
        seeded(R.scaled_dot_product_attention),
        [q, k, v],
        TOL,
    )


def test_sdpa_grouped_query_equals_repeated_heads():
    # Not in the reference: GQA must equal attention with key/value heads repeated.
    q, k, v = rnd(2, 4, 10, 8, seed=16), rnd(2, 2, 10, 8, seed=17), rnd(2, 2, 10, 8, seed=18)

    def repeated(q, k, v):
        rep = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(rep, dim=1) for t in (k, v))
        return R.scaled_dot_product_attention(q, k, v, is_causal=True)

    compare(
        "sdpa[gqa vs repeated kv]",
        "q(2, 4, 10, 8) kv(2, 2, 10, 8)",
        lambda q, k, v: U.scaled_dot_product_attention(q, k, v, is_causal=True),
        repeated,
        [q, k, v],
        TOL,
    )


# --- elementwise -----------------------------------------------------------------------------

EW_SHAPES = [(64,), (4, 32), (3, 5, 17)]


@pytest.mark.parametrize("shape", EW_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("mult", [1.0, 0.25, 4.0])
@pytest.mark.parametrize("dim", [0, -1])
def test_softmax(shape, constraint, mult, dim):
    compare(
        "softmax",
        str(shape),
        lambda x: U.softmax(x, dim=dim, constraint=constraint, mult=mult),
        lambda x: R.softmax(x, dim=dim, constraint=constraint, mult=mult),
        [rnd(*shape, seed=20)],
        TOL,
    )


@pytest.mark.parametrize("shape", EW_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("mult", [1.0, 0.25, 4.0])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(shape, constraint, mult, approximate):
    compare(
        "gelu",
        str(shape),
        lambda x: U.gelu(x, mult=mult, constraint=constraint, approximate=approximate),
        lambda x: R.gelu(x, mult=mult, constraint=constraint, approximate=approximate),
        [rnd(*shape, seed=21)],
        TOL,
    )


@pytest.mark.parametrize("shape", EW_SHAPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("mult", [1.0, 0.25, 4.0])
def test_silu(shape, constraint, mult):
    compare(
        "silu",
        str(shape),
        lambda x: U.silu(x, mult=mult, constraint=constraint),
        lambda x: R.silu(x, mult=mult, constraint=constraint),
        [rnd(*shape, seed=22)],
        TOL,
    )


@pytest.mark.parametrize("shape", EW_SHAPES)
@pytest.mark.parametrize("mult", [1.0, 0.25, 4.0])
def test_silu_glu(shape, mult):
    compare(
        "silu_glu",
        str(shape),
        lambda x, g: U.silu_glu(x, g, mult=mult),
        lambda x, g: R.silu_glu(x, g, mult=mult),
        [rnd(*shape, seed=23), rnd(*shape, seed=24)],
        TOL,
    )


@pytest.mark.parametrize("shape", EW_SHAPES + [(16, 64)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_same_seed(shape, p):
    def seeded(fn):
        def run(x):
            torch.manual_seed(3)
            return fn(x, p, True)

        return run

    compare("dropout", str(shape), seeded(U.dropout), seeded(R.dropout), [rnd(*shape, seed=25)])


def test_dropout_eval_is_train_mean():
    """Eval mode returns the train-mode mean √(1-p)·x (as the reference library does), so a
    model's eval function is its expected train function; p = 0 is the identity."""
    x = rnd(4, 8, seed=26)
    torch.testing.assert_close(U.dropout(x, 0.5, training=False), x * 0.5**0.5)
    assert torch.equal(U.dropout(x, 0.0, training=True), x)
    torch.manual_seed(0)
    big = torch.ones(200_000)
    mean = float(U.dropout(big, 0.3, training=True).mean())
    # 200k Bernoulli(0.7) draws: the mean's standard error is 0.0010·√(1/0.7)·√0.7 ≈ 0.0012
    assert abs(mean - 0.7**0.5) < 0.006


# --- norms and embedding ----------------------------------------------------------------------

NORM_SHAPES = [((8,), (16,)), ((4, 6), (32,)), ((3,), (5, 7)), ((2, 2, 2), (64,))]


@pytest.mark.parametrize("lead,norm", NORM_SHAPES)
@pytest.mark.parametrize("affine", ["none", "weight", "weight+bias"])
def test_layer_norm(lead, norm, affine):
    x, w, b = rnd(*lead, *norm, seed=30), rnd(*norm, seed=31), rnd(*norm, seed=32)
    inputs = {"none": [x], "weight": [x, w], "weight+bias": [x, w, b]}[affine]
    compare(
        "layer_norm",
        f"x{(*lead, *norm)}",
        lambda x, w=None, b=None: U.layer_norm(x, norm, w, b),
        lambda x, w=None, b=None: R.layer_norm(x, norm, w, b),
        inputs,
        TOL,
    )


@pytest.mark.parametrize("lead,norm", NORM_SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_rms_norm(lead, norm, affine):
    x, w = rnd(*lead, *norm, seed=33), rnd(*norm, seed=34)
    compare(
        "rms_norm",
        f"x{(*lead, *norm)}",
        lambda x, w=None: U.rms_norm(x, norm, w),
        lambda x, w=None: R.rms_norm(x, norm, w),
        [x, w] if affine else [x],
        TOL,
    )


@pytest.mark.parametrize(
    "idx_shape,vocab,dim", [((16, 32), 4096, 64), ((7,), 10, 5), ((3, 4), 50, 24)]
)
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding(idx_shape, vocab, dim, padding_idx):
    idx = torch.randint(0, vocab, idx_shape, generator=torch.Generator().manual_seed(35))
    idx.view(-1)[::3] = 0  # make the padding row occur
    compare(
        "embedding",
        f"idx{idx_shape} table{(vocab, dim)}",
        lambda w: U.embedding(idx, w, padding_idx),
        lambda w: R.embedding(idx, w, padding_idx),
        [rnd(vocab, dim, seed=36)],
        TOL,
    )


# --- residuals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64,), (4, 32), (2, 8, 16)])
@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_residual_split_add(shape, tau):
    w = rnd(shape[-1], shape[-1], seed=37)

    def block(mod):
        def run(x):
            residual, skip = mod.residual_split(x, tau)
            residual = mod.linear(residual, w, None)
            return mod.residual_add(residual, skip, tau)

        return run

    compare("residual_split/add", str(shape), block(U), block(R), [rnd(*shape, seed=38)], TOL)


@pytest.mark.parametrize("residual_mult", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("residual_attn_ratio", [1.0, 0.25, 4.0])
@pytest.mark.parametrize("layers", [1, 2, 4, 12])
def test_residual_tau_matches_reference_rule(residual_mult, residual_attn_ratio, layers):
    rule = transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)
    n = 2 * layers
    taus = U.residual_taus(["attn", "mlp"] * layers, residual_mult, residual_attn_ratio)
    for index in range(n):
        assert taus[index] == pytest.approx(rule(index, n), rel=1e-12)


# --- cross entropy -----------------------------------------------------------------------------


@pytest.mark.parametrize("rows,vocab", [(16, 10), (64, 257), (5, 3), (128, 32)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mult", [1.0, 0.5])
def test_cross_entropy(rows, vocab, reduction, mult):
    target = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(40))
    kw = dict(reduction=reduction, mult=mult)
    compare(
        "cross_entropy",
        f"({rows}, {vocab})",
        lambda x: U.cross_entropy(x, target, **kw),
        lambda x: R.cross_entropy(x, target, **kw),
        [rnd(rows, vocab, seed=41)],
        TOL,
    )


# --- deliberate differences --------------------------------------------------------------------


@pytest.mark.parametrize("rows,vocab,ignored", [(32, 11, 9), (64, 100, 40), (8, 5, 1)])
def test_difference_cross_entropy_ignore_index_mean_is_torch_loss(rows, vocab, ignored):
    """Deliberate difference (a): with ignore_index and mean reduction our loss value is
    torch.nn.functional.cross_entropy's (divides by non-ignored rows); the reference divides by
    all rows. The logit gradient stays unit-scaled and equals the reference's."""
    gen = torch.Generator().manual_seed(42)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[torch.randperm(rows, generator=gen)[:ignored]] = -100
    x = rnd(rows, vocab, seed=43)
    (xa,), (xb,) = leaves(x), leaves(x)
    ours, (ga,) = forward_backward(lambda t: U.cross_entropy(t, target), [xa])
    ref, (gb,) = forward_backward(lambda t: R.cross_entropy(t, target), [xb])
    torch_loss = F.cross_entropy(x, target)
    assert rel_err(ours, torch_loss) <= 1e-6
    # The reference's value is torch's times (kept rows / all rows): it is not the mean loss.
    kept = rows - ignored
    assert rel_err(ref, torch_loss * kept / rows) <= 1e-6
    assert abs(ref.item() - torch_loss.item()) > 1e-3 * torch_loss.item()
    # Gradients: identical to the reference's unit-scaled gradient, zero on ignored rows.
    assert rel_err(ga, gb) <= TOL
    assert torch.all(ga[target == -100] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_label_smoothing_value_is_torch(reduction):
    # The reference refuses label_smoothing; ours passes it to torch: the value is torch's and
    # the gradient is torch's "sum" gradient times the unit scale vocab / sqrt(vocab - 1).
    rows, vocab = 48, 20
    x = rnd(rows, vocab, seed=48)
    target = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(49))
    (xa,), (xb,) = leaves(x), leaves(x)
    ours, (ga,) = forward_backward(
        lambda t: U.cross_entropy(t, target, reduction=reduction, label_smoothing=0.1), [xa]
    )
    expected = F.cross_entropy(x, target, reduction=reduction, label_smoothing=0.1)
    assert rel_err(ours, expected) <= 1e-6
    F.cross_entropy(xb, target, reduction="sum", label_smoothing=0.1).backward()
    assert rel_err(ga, xb.grad * vocab / (vocab - 1) ** 0.5) <= TOL


def test_cross_entropy_mean_value_exact_for_many_rows():
    # Regression: the value must be exactly the mean even when the summed loss is large
    # (subtracting a detached difference cancelled catastrophically at ~1e5 rows).
    rows, vocab = 2**17, 16
    x = rnd(rows, vocab, seed=44) * 3
    target = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(45))
    target[::5] = -100
    ours = U.cross_entropy(x, target)
    expected = F.cross_entropy(x.double(), target)
    assert rel_err(ours, expected) <= 1e-6


def test_cross_entropy_unit_gradient_scale_independent_of_batch():
    # The gradient per row does not shrink with the number of rows (it is not divided by it).
    grads = []
    for rows in (64, 1024):
        x = rnd(rows, 32, seed=46).requires_grad_()
        t = torch.randint(0, 32, (rows,), generator=torch.Generator().manual_seed(47))
        U.cross_entropy(x, t).backward()
        grads.append(x.grad[:64])
    assert rel_err(grads[1], grads[0]) <= TOL


@pytest.mark.parametrize("constraint", ["gmean", "to_output_scale", None, "none"])
def test_constraint_spelling_none(constraint):
    # "none" and None are the same constraint.
    for combo in itertools.product([0.5, 2.0], [0.25, 4.0]):
        from lit_unitscale.unit.constraints import apply_constraint

        out = apply_constraint(constraint, *combo)
        if constraint in (None, "none"):
            assert out == combo
        elif constraint == "gmean":
            assert out[0] == pytest.approx((combo[0] * combo[1]) ** 0.5)
        else:
            assert out == (combo[0], combo[0])
