"""Clipping in unit terms: the RMS rule against a hand computation, the norm rule against
torch's clip_grad_norm_, a threshold that means the same at every width at init, and sharded
gradients (DTensor over 2 gloo processes) clipped like the whole tensor."""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.models import TransformerConfig
from lit_unitscale.models.architectures import DecoderLM
from lit_unitscale.unit.clipping import (
    clip_gradients,
    equivalent_norm,
    gradient_statistic,
    rule_for,
)

shapes = st.lists(st.tuples(st.integers(1, 7), st.integers(1, 9)), min_size=1, max_size=5)


def _params(shapes_: list[tuple[int, int]], seed: int, scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes_:
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=g) * scale
        params.append(p)
    return params


@settings(max_examples=60, deadline=None)
@given(
    shapes_=shapes,
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 100.0),
    threshold=st.floats(0.05, 20.0),
)
def test_rms_rule_is_the_hand_computation(shapes_, seed, scale, threshold) -> None:
    params = _params(shapes_, seed, scale)
    before = [p.grad.double().numpy().copy() for p in params]
    flat = np.concatenate([b.ravel() for b in before])
    rms = math.sqrt(float((flat**2).sum()) / flat.size)  # float64, by hand
    statistic = clip_gradients(params, threshold, "rms")
    assert float(statistic) == pytest.approx(rms, rel=1e-5)
    factor = min(1.0, threshold / (rms + 1e-6))
    for p, b in zip(params, before, strict=True):
        np.testing.assert_allclose(p.grad.double().numpy(), b * factor, rtol=1e-5, atol=1e-12)
    after = np.concatenate([p.grad.double().numpy().ravel() for p in params])
    assert math.sqrt(float((after**2).mean())) <= threshold * (1 + 1e-5)


@settings(max_examples=40, deadline=None)
@given(shapes_=shapes, seed=st.integers(0, 2**16), threshold=st.floats(0.05, 20.0))
def test_norm_rule_matches_torch_and_rms_is_norm_at_threshold_sqrt_n(shapes_, seed, threshold):
    ours, theirs, as_norm = (_params(shapes_, seed, 3.0) for _ in range(3))
    clip_gradients(ours, threshold, "norm")
    torch.nn.utils.clip_grad_norm_(theirs, threshold)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # The RMS rule at c is global-norm clipping at c*sqrt(N): what DeepSpeed is given.
    rms_clipped = _params(shapes_, seed, 3.0)
    n = sum(p.numel() for p in rms_clipped)
    clip_gradients(rms_clipped, threshold, "rms")
    torch.nn.utils.clip_grad_norm_(as_norm, equivalent_norm(threshold, n))
    for a, b in zip(rms_clipped, as_norm, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_auto_is_rms_under_umup_and_norm_under_sp() -> None:
    assert rule_for("auto", "umup") == "rms" and rule_for("auto", "sp") == "norm"
    assert rule_for("norm", "umup") == "norm" and rule_for("rms", "sp") == "rms"
    with pytest.raises(ValueError, match="auto, norm or rms"):
        rule_for("value", "umup")
    with pytest.raises(ValueError, match="positive"):
        clip_gradients(_params([(2, 2)], 0, 1.0), 0.0, "rms")


WIDTHS = [16, 32, 64, 128, 256]
THRESHOLD = 1.0  # the u-μP recipes' gradient_clip_val (docs/tuning.md)


def _init_statistics(width: int, seeds: int = 3) -> tuple[list[float], list[float]]:
    """Whole-gradient RMS and global norm at initialisation of a u-μP decoder, one per seed."""
    rms, norm = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        config = TransformerConfig(
            vocab_size=96, d_model=width, n_layers=2, n_heads=max(1, width // 16), max_seq_len=16
        )
        model = DecoderLM(config)
        ids = torch.randint(0, 96, (4, 16))
        model.loss(model(ids), ids).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        rms.append(float(gradient_statistic(grads, "rms")))
        norm.append(float(gradient_statistic(grads, "norm")))
    return rms, norm


@settings(max_examples=6, deadline=None)
@given(widths=st.lists(st.sampled_from(WIDTHS), min_size=2, max_size=2, unique=True))
def test_the_rms_threshold_is_width_independent_at_init(widths) -> None:
    narrow, wide = sorted(widths)
    rms_n, norm_n = _init_statistics(narrow)
    rms_w, norm_w = _init_statistics(wide)
    # The share of steps the RMS rule clips at init does not grow with width, at the recipes'
    # threshold (the unit scale itself, where it is most sensitive) and above it ...
    for threshold in (THRESHOLD, 2 * THRESHOLD):
        share = [sum(v > threshold for v in rms) / len(rms) for rms in (rms_n, rms_w)]
        assert share[1] <= share[0], (threshold, share)
    # ... because the statistic it bounds stays put (within 30 %), while the global norm grows
    # with the parameter count: a norm threshold means something else at every width.
    assert 0.7 < np.mean(rms_w) / np.mean(rms_n) < 1.3
    assert np.mean(norm_w) / np.mean(norm_n) > 1.5


def _sharded_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        full = [torch.randn(6, 5) * 7, torch.randn(4, 3)]
        replicated = torch.randn(3) * 2  # a plain tensor every rank holds whole (as after DDP)
        params = []
        for g in full:
            p = torch.nn.Parameter(distribute_tensor(torch.zeros_like(g), mesh, [Shard(0)]))
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            params.append(p)
        plain = torch.nn.Parameter(torch.zeros(3))
        plain.grad = replicated.clone()
        params.append(plain)
        statistic = clip_gradients(params, 1.5, "rms")
        results[rank] = (
            float(statistic),
            [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in params],
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_gradients_are_clipped_like_the_whole_tensor() -> None:
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    full = [torch.randn(6, 5) * 7, torch.randn(4, 3), torch.randn(3) * 2]
    whole = [torch.nn.Parameter(torch.zeros_like(g)) for g in full]
    for p, g in zip(whole, full, strict=True):
        p.grad = g.clone()
    expected = clip_gradients(whole, 1.5, "rms")
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        init_file = os.path.join(tmp, "init")
        mp.start_processes(
            _sharded_worker, args=(2, init_file, results), nprocs=2, start_method="spawn"
        )
        got = dict(results)
    for rank in (0, 1):
        statistic, grads = got[rank]
        assert statistic == pytest.approx(float(expected), rel=1e-6)
        for a, b in zip(grads, whole, strict=True):
            torch.testing.assert_close(a, b.grad, rtol=1e-5, atol=1e-6)


# -- the task's clipping hook (tasks.base) applies the rule ---------------------------------
def _tiny_task(parametrization: str, rule: str = "auto"):
    from lit_unitscale.tasks.causal_lm import CausalLM

    config = TransformerConfig(
        vocab_size=50,
        d_model=32,
        n_layers=1,
        n_heads=2,
        max_seq_len=8,
        parametrization=parametrization,
    )
    return CausalLM(config, lr=0.01, gradient_clip_rule=rule)


@pytest.mark.parametrize(
    ("parametrization", "rule", "bounded"),
    [("umup", "auto", "rms"), ("sp", "auto", "norm"), ("umup", "norm", "norm")],
)
def test_the_task_hook_clips_by_its_rule(parametrization, rule, bounded) -> None:
    import types

    task = _tiny_task(parametrization, rule)
    task.configure_model()
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (4, 8))
    task.model.loss(task.model(ids), ids).backward()
    for p in task.parameters():
        p.grad *= 100.0  # well above any threshold
    from lightning.pytorch.plugins.precision import Precision

    task._trainer = types.SimpleNamespace(  # what the hook and Lightning's clipping read
        strategy=types.SimpleNamespace(),
        gradient_clip_val=0.5,
        gradient_clip_algorithm=None,
        precision_plugin=Precision(),
    )
    task.configure_gradient_clipping(torch.optim.SGD(task.parameters()), 0.5, None)
    grads = [p.grad for p in task.parameters() if p.grad is not None]
    assert float(gradient_statistic(grads, bounded)) == pytest.approx(0.5, rel=1e-4)


def test_the_rms_rule_under_deepspeed_is_refused_with_its_global_norm_equivalent() -> None:
    import types

    from lit_unitscale.errors import RecipeError

    task = _tiny_task("umup")
    task.configure_model()
    task._trainer = types.SimpleNamespace(strategy=types.SimpleNamespace(strategy_name="deepspeed"))
    n = sum(p.numel() for p in task.parameters())
    with pytest.raises(RecipeError, match="gradient_clip_rule: norm") as error:
        task.configure_gradient_clipping(None, 4.0, None)
    assert f"{4.0 * math.sqrt(n):.6g}" in str(error.value)
