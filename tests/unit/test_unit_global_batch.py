"""Weight-gradient scale from the global token count, with 2 real processes (gloo) and k=4
micro-batches: after Lightning-style accumulation (loss / k per micro-batch) and DDP-style
averaging across ranks, the gradients equal one process computing the whole global batch in one
step (1e-5 relative). Without ``set_data_parallel`` they are off by exactly sqrt(W * k)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _unit_helpers import rel_err, rms
from torch import nn

import lit_unitscale.unit.functional as U
from lit_unitscale.unit import Embedding, LayerNorm, Linear, LinearReadout, global_batch

WORLD, ACCUM = 2, 4
SEQS_PER_MICRO, SEQ_LEN, VOCAB, WIDTH = 3, 5, 17, 16


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = Embedding(VOCAB, WIDTH)
        self.norm = LayerNorm(WIDTH)
        self.up = Linear(WIDTH, 2 * WIDTH, bias=True)
        self.down = Linear(2 * WIDTH, WIDTH, constraint=None)
        self.head = LinearReadout(WIDTH, VOCAB)

    def forward(self, ids):
        x = self.emb(ids)
        r, skip = U.residual_split(x, 0.5)
        r = self.down(U.gelu(self.up(self.norm(r))))
        return self.head(U.residual_add(r, skip, 0.5))


def make_model() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial norm gain/bias so their gradients are exercised
        model.norm.weight.normal_(1.0, 0.2)
        model.norm.bias.normal_(0.0, 0.2)
    return model


def global_batch_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = WORLD * ACCUM * SEQS_PER_MICRO
    ids = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    targets = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    return ids, targets


def loss_fn(model, ids, targets):
    logits = model(ids)
    return U.cross_entropy(logits.flatten(0, 1), targets.flatten())


def single_process_grads() -> dict[str, torch.Tensor]:
    model = make_model()
    ids, targets = global_batch_data()
    loss_fn(model, ids, targets).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _accumulate_and_average(rank: int) -> dict[str, torch.Tensor]:
    model = make_model()
    ids, targets = global_batch_data()
    # DistributedSampler-like split: rank r takes its contiguous share, then micro-batches.
    per_rank = ACCUM * SEQS_PER_MICRO
    ids, targets = (t[rank * per_rank : (rank + 1) * per_rank] for t in (ids, targets))
    for k in range(ACCUM):
        sl = slice(k * SEQS_PER_MICRO, (k + 1) * SEQS_PER_MICRO)
        (loss_fn(model, ids[sl], targets[sl]) / ACCUM).backward()  # as Lightning does
    for p in model.parameters():  # DDP: average gradients across ranks
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= WORLD
    return {n: p.grad for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out_path: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        uncorrected = _accumulate_and_average(rank)
        global_batch.set_data_parallel(WORLD, ACCUM)
        corrected = _accumulate_and_average(rank)
        if rank == 0:
            torch.save({"corrected": corrected, "uncorrected": uncorrected}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_global_batch_gradients_match_single_process(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    result = torch.load(out)
    corrected, uncorrected = result["corrected"], result["uncorrected"]
    expected = single_process_grads()
    assert set(corrected) == set(expected)
    for name, g in expected.items():
        # With the correction: the same gradients as one process with the whole batch.
        assert rel_err(corrected[name], g) <= 1e-5, name
        # Without it: exactly sqrt(W * k) too small (so this test can fail).
        ratio = rms(g) / rms(uncorrected[name])
        assert math.isclose(ratio, math.sqrt(WORLD * ACCUM), rel_tol=1e-5), (name, ratio)
        assert rel_err(uncorrected[name], g) > 0.5


def test_data_parallel_context_restores_and_validates():
    assert global_batch.grad_factor() == 1.0
    with global_batch.data_parallel(2, 4):
        assert global_batch.grad_factor() == pytest.approx(math.sqrt(8))
        assert global_batch.weight_grad_scale(16) == pytest.approx(math.sqrt(8) / 4)
    assert global_batch.grad_factor() == 1.0
    with pytest.raises(ValueError):
        global_batch.set_data_parallel(0, 1)


def test_accumulation_alone_in_one_process():
    # k micro-batches in one process with set_data_parallel(1, k) equal the whole batch at once.
    expected = single_process_grads()
    model = make_model()
    ids, targets = global_batch_data()
    n = ids.shape[0] // (WORLD * ACCUM)
    with global_batch.data_parallel(1, WORLD * ACCUM):
        for k in range(WORLD * ACCUM):
            sl = slice(k * n, (k + 1) * n)
            (loss_fn(model, ids[sl], targets[sl]) / (WORLD * ACCUM)).backward()
    for name, p in model.named_parameters():
        assert rel_err(p.grad, expected[name]) <= 1e-5, name
