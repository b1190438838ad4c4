"""Sharded initialisation, FSDP2 collective dtypes and per-rank MLM masks under forkserver
workers, on 2 gloo processes (one group runs every check, see ``_sharding_worker.py``); plus
in-process checks: DeepSpeed's CPU Adam under offload, tensor parallelism refused, the FSDP2
mixed-precision policy.

Exactness: initial weights, buffers and the random generator's state after the build are
compared with ``torch.equal`` (bit for bit); three CPU Adam steps at lr 0.1 against torch
AdamW's within 1e-5 absolute on unit-scale weights (measured 2.6e-6 on one element, ~6e-8 after
one step: the same update, vectorised with other rounding, which Adam's division by sqrt(v)
amplifies where v is tiny).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_sharding_worker.py")
EXTENSIONS = Path.home() / ".cache/lit_unitscale/torch_extensions"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from tests.strategies.test_strategies_distributed import _free_port

    out = tmp_path_factory.mktemp("sharding")
    env = {
        **os.environ,
        "LIT_UNITSCALE_CACHE": str(out / "cache"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
    }
    env.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS))
    env.pop("SLURM_NTASKS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=(out / f"log{rank}").open("w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        proc.wait(timeout=600)
    logs = "".join((out / f"log{r}").read_text()[-3000:] for r in (0, 1))
    assert all((out / f"rank{r}.json").is_file() for r in (0, 1)), logs
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _ok(ranks: list[dict], check: str) -> list[dict]:
    for record in ranks:
        assert "error" not in record[check], record[check]["error"]
    return [record[check] for record in ranks]


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_meta_build_equals_the_single_device_build(ranks) -> None:
    for record in _ok(ranks, "meta_init"):
        record.pop("seconds")
        for case, result in record.items():
            assert result["unequal"] == [], case
            assert result["generator_continues"], case
            # Each rank holds its half of every parameter (an odd dim 0 rounds up on rank 0).
            assert 0.4 < result["local_fraction"] < 0.6, case


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_gathers_bf16_under_bf16_mixed_and_reduces_in_fp32(ranks) -> None:
    for record in _ok(ranks, "collective_dtypes"):
        assert record["32-true"] == {"all_gather": ["float32"], "reduce_scatter": ["float32"]}
        assert record["bf16-mixed"] == {"all_gather": ["bfloat16"], "reduce_scatter": ["float32"]}
        assert record["bf16-mixed,reduce=bfloat16"]["reduce_scatter"] == ["bfloat16"]
        assert record["bf16-mixed,param=float32"]["all_gather"] == ["float32"]


@pytest.mark.distributed
@pytest.mark.slow
def test_mlm_masks_differ_between_ranks_under_forkserver_workers(ranks) -> None:
    first, second = _ok(ranks, "mlm_masks")
    assert (first["rank"], second["rank"]) == (0, 1)
    # Same examples on both ranks (no shuffle), so only the masks can differ.
    assert first["tokens"] == second["tokens"]
    assert first["chosen"] != second["chosen"]
    # Without the rank every rank draws the same masks: the comparison can fail.
    assert first["chosen_unranked"] == second["chosen_unranked"]


@pytest.fixture
def extensions(monkeypatch) -> None:
    """DeepSpeed compiles CPU Adam once (~90 s here) into this cache, shared with the 2-process
    tests."""
    default = os.environ.get("TORCH_EXTENSIONS_DIR", str(EXTENSIONS))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", default)


@pytest.mark.slow
def test_zero_offload_tasks_step_with_deepspeed_cpu_adam_over_umup_groups(extensions) -> None:
    from lightning.pytorch import Trainer

    from lit_unitscale.models import TransformerConfig
    from lit_unitscale.strategies import DeepSpeedStrategy
    from lit_unitscale.tasks.causal_lm import CausalLM

    groups = {}
    for offload in (True, False):
        strategy = DeepSpeedStrategy(stage=3, offload_optimizer=offload, offload_parameters=offload)
        trainer = Trainer(
            strategy=strategy, accelerator="cpu", devices=1, max_steps=2, logger=False
        )
        config = TransformerConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
        task = CausalLM(config, lr=0.5)
        task.trainer = trainer
        task.configure_model()
        optimizer = task.configure_optimizers()["optimizer"]
        groups[type(optimizer).__name__] = [
            (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
        ]
    assert set(groups) == {"DeepSpeedCPUAdam", "AdamW"}
    assert groups["DeepSpeedCPUAdam"] == groups["AdamW"]  # the same u-μP groups
    assert len({lr for lr, _ in groups["AdamW"]}) > 1


@pytest.mark.slow
def test_cpu_adam_step_equals_torch_adamw_on_umup_groups(extensions) -> None:
    from lit_unitscale.models import DecoderLM, TransformerConfig
    from lit_unitscale.strategies import DeepSpeedStrategy
    from lit_unitscale.unit import param_groups

    config = TransformerConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(DecoderLM(config))
    offload = DeepSpeedStrategy(stage=2, offload_optimizer=True)
    plain = DeepSpeedStrategy(stage=2)
    assert offload.offloads_optimizer and not plain.offloads_optimizer
    kwargs = {"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
    optimizers = [
        strategy.adamw(param_groups(model, 0.1, weight_decay=1e-3), **kwargs)
        for strategy, model in zip((offload, plain), models, strict=True)
    ]
    assert [type(o).__name__ for o in optimizers] == ["DeepSpeedCPUAdam", "AdamW"]
    ids = torch.randint(0, 37, (2, 8))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            model.loss(model(ids), ids).backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_tensor_parallel_is_refused_with_one_line() -> None:
    from lit_unitscale.strategies import FSDP2Strategy, TopologyError

    with pytest.raises(TopologyError, match="tensor_parallel_size=2 is not supported") as error:
        FSDP2Strategy(tensor_parallel_size=2)
    assert "\n" not in str(error.value)


def test_fsdp2_policy_follows_the_trainer_precision() -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lit_unitscale.strategies import FP8SimPrecision, FSDP2Strategy

    assert FSDP2Strategy().mp_policy() is None  # 32-true: fp32 everywhere
    cases = [
        ({}, MixedPrecision("bf16-mixed", "cpu"), (torch.bfloat16, torch.float32)),
        ({}, FP8SimPrecision("bf16-mixed", "cpu"), (torch.bfloat16, torch.float32)),
        ({"param_dtype": "bfloat16"}, None, (torch.bfloat16, torch.float32)),
        ({"param_dtype": "float16"}, None, (torch.float16, torch.float32)),
        ({"reduce_dtype": "bfloat16"}, MixedPrecision("bf16-mixed", "cpu"), (torch.bfloat16,) * 2),
        ({"param_dtype": "float32"}, MixedPrecision("bf16-mixed", "cpu"), (torch.float32, None)),
    ]
    for options, plugin, (gather, reduce) in cases:
        strategy = FSDP2Strategy(**options)
        if plugin is not None:
            strategy.precision_plugin = plugin
        policy = strategy.mp_policy()
        assert (policy.param_dtype, policy.reduce_dtype) == (gather, reduce), options
