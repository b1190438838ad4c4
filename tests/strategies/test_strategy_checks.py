"""In-process checks of the strategy layer: refusals, SLURM topology, the resumable sampler,
FP8 simulation in backward. No processes are started."""

from __future__ import annotations

import types

import pytest
import torch
from lightning.pytorch import Trainer

from lit_unitscale.callbacks.resumable_sampling import ResumableSampler
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.models.activation_checkpointing import checkpoint_blocks
from lit_unitscale.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FP8SimPrecision,
    FP16NoScalePrecision,
    FSDP2Strategy,
    PrecisionError,
    TopologyError,
    check_slurm_topology,
)
from lit_unitscale.unit import fp8

SLURM = {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train", "SLURM_NTASKS_PER_NODE": "4"}


def test_slurm_mismatch_is_one_error_naming_both_counts() -> None:
    env = {**SLURM, "SLURM_NNODES": "2"}
    check_slurm_topology(devices=4, num_nodes=2, environ=env)
    with pytest.raises(
        TopologyError,
        match=r"--ntasks-per-node=4 but trainer.devices=2.*"
        r"--nodes=2 but trainer.num_nodes=1",
    ):
        check_slurm_topology(devices=2, num_nodes=1, environ=env)
    check_slurm_topology(devices=2, num_nodes=1, environ={})  # not under SLURM
    check_slurm_topology(devices=2, num_nodes=1, environ={**env, "SLURM_JOB_NAME": "bash"})
    check_slurm_topology(devices=4, num_nodes=2, environ={**env, "SLURM_NTASKS_PER_NODE": "4(x2)"})


def test_trainer_refuses_slurm_mismatch_before_launching(monkeypatch) -> None:
    for key, value in {**SLURM, "SLURM_NNODES": "2", "SLURM_NODELIST": "n1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    with pytest.raises(TopologyError, match="trainer.devices=2"):
        Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(), logger=False)


@pytest.mark.parametrize(
    ("strategy", "precision", "plugins", "reason"),
    [
        (DeepSpeedStrategy, None, [FP16NoScalePrecision()], "own loss scaler"),
        (DDPStrategy, "16-true", None, "eps underflows"),
        (FSDP2Strategy, "16-true", None, "eps underflows"),
    ],
)
def test_impossible_precision_combinations_are_refused(strategy, precision, plugins, reason):
    with pytest.raises(PrecisionError, match=reason):
        Trainer(
            accelerator="cpu",
            devices=2,
            strategy=strategy(),
            precision=precision,
            plugins=plugins,
            logger=False,
        )


def test_deepspeed_gets_fp8_sim_through_its_own_precision() -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DeepSpeedStrategy(stage=3),
        plugins=[FP8SimPrecision("bf16-mixed")],
        logger=False,
    )
    assert type(trainer.precision_plugin).__name__ == "DeepSpeedFP8SimPrecision"
    assert trainer.precision_plugin.precision == "bf16-mixed"


def test_sampler_gives_the_same_global_batches_on_any_process_count() -> None:
    data = list(range(40))
    one = list(ResumableSampler(data, 1, 0, seed=5, epoch=2))
    ranks = [list(ResumableSampler(data, 2, r, seed=5, epoch=2)) for r in (0, 1)]
    batch = 4  # per rank; global batch 8
    for step in range(len(data) // 8):
        global_batch = set(one[step * 8 : (step + 1) * 8])
        split = set(ranks[0][step * batch : (step + 1) * batch])
        split |= set(ranks[1][step * batch : (step + 1) * batch])
        assert split == global_batch
    start = 3 * batch * 2  # samples consumed by both ranks
    resumed = ResumableSampler(data, 2, 1, seed=5, epoch=2, start=start)
    assert list(resumed) == ranks[1][3 * batch :]
    assert list(resumed) == ranks[1]  # the offset applies to one iteration only
    assert list(ResumableSampler(data, 1, 0, seed=5, epoch=3)) != one


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_fp8_sim_covers_backward_including_recomputed_forwards() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, max_seq_len=8)
    plain = DecoderLM(config)
    ids = torch.randint(0, 50, (4, 8))
    plugin = FP8SimPrecision("32-true")
    owner = types.SimpleNamespace(backward=lambda loss, *a, **k: loss.backward())

    def run(model: torch.nn.Module) -> list[torch.Tensor]:
        model.zero_grad()
        with plugin.forward_context():
            loss = model.loss(model(ids), ids)
        plugin.backward(loss, owner, None)
        return _grads(model)

    unsimulated = [g.clone() for g in run(plain)]
    simulated = plugin.convert_module(DecoderLM(config))
    simulated.load_state_dict(plain.state_dict())
    reference = [g.clone() for g in run(simulated)]
    # The simulation is the modules': the same model without it differs, and the region flag
    # (fp8_matmuls) gives the same gradients bit for bit.
    assert not all(torch.equal(a, b) for a, b in zip(unsimulated, reference, strict=True))
    plain.zero_grad()
    with fp8.fp8_matmuls():
        plain.loss(plain(ids), ids).backward()
    assert all(torch.equal(a, b) for a, b in zip(_grads(plain), reference, strict=True))
    # With activation checkpointing the forward is recomputed during backward, outside any
    # context: the modules still simulate, so the recomputation matches what was saved.
    checkpointed = DecoderLM(config)
    checkpointed.load_state_dict(plain.state_dict())
    checkpoint_blocks(checkpointed)
    plugin.convert_module(checkpointed)
    got = run(checkpointed)
    assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))


def test_fp16_noscale_is_real_fp16_autocast_without_scaler() -> None:
    plugin = FP16NoScalePrecision("cpu")
    assert plugin.scaler is None
    with plugin.forward_context():
        out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert out.dtype == torch.float16
