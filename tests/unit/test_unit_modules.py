"""Modules carry roles; sp matches torch's layers; param groups match the reference's u-μP Adam
rules exactly; roles survive FSDP2."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import unit_scaling as uu
from torch import nn
from unit_scaling.optim import lr_scale_func_adam, scaled_parameters

from lit_unitscale.unit import (
    Embedding,
    LayerNorm,
    Linear,
    LinearReadout,
    RMSNorm,
    adam_lr_multiplier,
    named_param_specs,
    param_groups,
    set_depth,
)

# --- roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_every_parameter_has_its_role(parametrization):
    p = parametrization
    cases = [
        (Linear(8, 4, True, p), {"weight": ("weight", 8), "bias": ("bias", 8)}),
        (LinearReadout(8, 4, True, p), {"weight": ("output", 8), "bias": ("bias", 8)}),
        (Embedding(10, 6, parametrization=p), {"weight": ("embedding", 6)}),
        (LayerNorm(6, parametrization=p), {"weight": ("norm", 6), "bias": ("bias", 6)}),
        (LayerNorm(6, bias=False, parametrization=p), {"weight": ("norm", 6)}),
        (LayerNorm(6, elementwise_affine=False, parametrization=p), {}),
        (RMSNorm(6, parametrization=p), {"weight": ("norm", 6)}),
        (RMSNorm(6, elementwise_affine=False, parametrization=p), {}),
        (Linear(8, 4, parametrization=p), {"weight": ("weight", 8)}),
    ]  # fmt: skip
    for module, expected in cases:
        specs = {n: (s.role, s.fan_in) for n, p_, s in named_param_specs(module)}
        assert specs == expected, module
        assert {n for n, _ in module.named_parameters()} == set(expected)


def test_set_depth_and_shared_parameters_listed_once():
    model = nn.Module()
    model.emb = Embedding(10, 8)
    model.stack = nn.ModuleList([Linear(8, 8), Linear(8, 8)])
    model.head = LinearReadout(8, 10)
    model.head.weight = model.emb.weight  # tied
    set_depth(model.stack, 2)
    specs = {n: s for n, _, s in named_param_specs(model)}
    assert specs["stack.0.weight"].depth == 2 and specs["emb.weight"].depth is None
    assert len(specs) == 3  # the tied weight appears once


# --- sp matches torch -------------------------------------------------------------------------


def test_sp_modules_match_torch_given_same_weights():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 12)
    lin, ref = Linear(12, 9, bias=True, parametrization="sp"), nn.Linear(12, 9)
    ref.load_state_dict(lin.state_dict())
    assert torch.equal(lin(x), ref(x))
    ln, ref_ln = LayerNorm(12, parametrization="sp"), nn.LayerNorm(12)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    ref_ln.load_state_dict(ln.state_dict())
    assert torch.equal(ln(x), ref_ln(x))
    rms, ref_rms = RMSNorm(12, parametrization="sp"), nn.RMSNorm(12, eps=1e-5)
    ref_rms.load_state_dict(rms.state_dict())
    assert torch.equal(rms(x), ref_rms(x))
    ids = torch.randint(0, 20, (4, 6))
    emb, ref_emb = Embedding(20, 12, padding_idx=0, parametrization="sp"), nn.Embedding(20, 12)
    ref_emb.load_state_dict(emb.state_dict())
    assert torch.equal(emb(ids), ref_emb(ids))


def _ks_stat(sample: torch.Tensor, cdf) -> float:
    s, _ = sample.flatten().double().sort()
    n = s.numel()
    c = cdf(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - c).abs().max().item(), (c - (i - 1) / n).abs().max().item())


def test_sp_init_distributions_match_torch():
    # Kolmogorov-Smirnov against the distribution torch's own layers draw from; the critical
    # value at alpha = 1e-3 is 1.95 / sqrt(n).
    torch.manual_seed(1)
    fan_in, fan_out = 300, 200
    lin = Linear(fan_in, fan_out, bias=True, parametrization="sp")
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias: U(-b, b)
    uniform = lambda s: ((s + bound) / (2 * bound)).clamp(0, 1)
    assert _ks_stat(lin.weight, uniform) < 1.95 / math.sqrt(lin.weight.numel())
    assert _ks_stat(lin.bias, uniform) < 1.95 / math.sqrt(lin.bias.numel())
    normal = lambda s: 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    emb = Embedding(400, 64, padding_idx=3, parametrization="sp")
    rows = torch.cat([emb.weight[:3], emb.weight[4:]])
    assert _ks_stat(rows.detach(), normal) < 1.95 / math.sqrt(rows.numel())
    assert torch.all(emb.weight[3] == 0)  # as nn.Embedding: the padding row starts at zero
    umup = Linear(fan_in, fan_out, bias=True)  # umup: N(0, 1) weights, zero bias
    assert _ks_stat(umup.weight.detach(), normal) < 1.95 / math.sqrt(umup.weight.numel())
    assert torch.all(umup.bias == 0)
    ln = LayerNorm(16, parametrization="sp")
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


# --- optimizer groups vs the reference ---------------------------------------------------------

D, V, L, FF = 48, 50, 3, 96


class OurLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = RMSNorm(D)
        self.qkv = Linear(D, 3 * D)
        self.o = Linear(D, D, bias=True)
        self.ln = LayerNorm(D)
        self.up = Linear(D, FF)
        self.down = Linear(FF, D)

    def forward(self, x):
        x = self.o(self.qkv(self.norm(x))[..., :D])
        return self.down(self.up(self.ln(x)))


class OurModel(nn.Module):
    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.final(x))


class RefLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = uu.RMSNorm(D, elementwise_affine=True)
        self.qkv = uu.Linear(D, 3 * D)
        self.o = uu.Linear(D, D, bias=True)
        self.ln = uu.LayerNorm(D, elementwise_affine=True)
        self.up = uu.Linear(D, FF)
        self.down = uu.Linear(FF, D)


def our_model() -> nn.Module:
    m = OurModel()
    m.emb = Embedding(V, D)
    m.layers = nn.ModuleList([OurLayer() for _ in range(L)])
    set_depth(m.layers, L)
    m.final = LayerNorm(D)
    m.head = LinearReadout(D, V, bias=True)
    return m


def ref_model() -> nn.Module:
    m = nn.Module()
    m.emb = uu.Embedding(V, D)
    m.layers = uu.DepthModuleList([RefLayer() for _ in range(L)])
    m.final = uu.LayerNorm(D, elementwise_affine=True)
    m.head = uu.LinearReadout(D, V, bias=True)
    return m


def test_lr_multipliers_equal_reference_adam_rule():
    ours, ref = our_model(), ref_model()
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in ours.named_parameters()}
    lr = 3e-3
    per_param = {}
    for group in param_groups(ours, lr=lr, weight_decay=0.1):
        for name in group["names"]:
            per_param[name] = group
    assert set(per_param) == set(ref_params)
    for name, _, spec in named_param_specs(ours):
        expected = lr_scale_func_adam(ref_params[name])
        assert adam_lr_multiplier(spec) == expected, name  # exactly equal
        assert per_param[name]["lr"] == pytest.approx(lr * expected, rel=1e-15)
    # The reference's own groups (what its Adam would see) give the same per-parameter LR.
    for group in scaled_parameters(ref.parameters(), lr_scale_func_adam, lr=lr):
        (p,) = group["params"]
        name = next(n for n, q in ref.named_parameters() if q is p)
        assert per_param[name]["lr"] == pytest.approx(group["lr"], rel=1e-15)


def test_independent_weight_decay_and_sp():
    ours = our_model()
    lr, wd = 2e-3, 0.1
    for group in param_groups(ours, lr=lr, weight_decay=wd):
        decays = group["weight_decay"] != 0
        if decays:
            assert group["weight_decay"] == pytest.approx(wd / group["lr"], rel=1e-15)
        roles = {s.role for n, _, s in named_param_specs(ours) if n in group["names"]}
        assert decays == bool(roles & {"weight", "embedding", "output"})
    coupled = param_groups(ours, lr=lr, weight_decay=wd, independent_weight_decay=False)
    assert {g["weight_decay"] for g in coupled} == {0.0, wd}
    sp = param_groups(ours, lr=lr, weight_decay=wd, parametrization="sp")
    assert all(g["lr_mult"] == 1.0 and g["lr"] == lr for g in sp)
    n_params = sum(len(g["params"]) for g in sp)
    assert n_params == len(list(ours.parameters()))
    torch.optim.AdamW(param_groups(ours, lr=lr, weight_decay=wd))  # torch accepts the groups


def test_unknown_parameters_raise_clear_error():
    model = our_model()
    model.extra = nn.Linear(4, 4)  # a plain torch layer: no role
    with pytest.raises(ValueError, match="without a u-μP role.*extra.weight"):
        param_groups(model, lr=1e-3)


def test_frozen_parameters_skipped():
    model = our_model()
    model.emb.weight.requires_grad_(False)
    names = {n for g in param_groups(model, lr=1e-3) for n in g["names"]}
    assert "emb.weight" not in names and "head.weight" in names


# --- FSDP2 -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_roles_survive_fsdp2(monkeypatch):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = our_model()
        before = {n: (s, adam_lr_multiplier(s)) for n, _, s in named_param_specs(model)}
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        params = dict(model.named_parameters())
        after = {n: (s, adam_lr_multiplier(s)) for n, _, s in named_param_specs(model)}
        assert after == before
        # The specs point at the sharded (DTensor) parameters the optimizer will get.
        for name, p, _ in named_param_specs(model):
            assert p is params[name]
            assert type(p.data).__name__ == "DTensor"
        groups = param_groups(model, lr=1e-3, weight_decay=0.1)
        assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in params.values()}
        torch.optim.AdamW(groups)
        model(torch.randint(0, V, (2, 3))).sum().backward()  # still trains
        assert all(p.grad is not None for p in params.values())
    finally:
        dist.destroy_process_group()
