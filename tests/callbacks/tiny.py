"""A tiny causal LM and in-memory batches for callback and tool tests (no corpus, no network)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_unitscale.models import TransformerConfig
from lit_unitscale.tasks.causal_lm import CausalLM

VOCAB, SEQ = 64, 16


class RandomTokens(Dataset):
    """Fixed random token blocks (the same on every process)."""

    def __init__(self, n: int = 64, seq_len: int = SEQ, vocab: int = VOCAB, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq_len + 1), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i, :-1], "labels": self.tokens[i, 1:]}


def tiny_task(parametrization: str = "umup", d_model: int = 32, lr: float = 1e-2) -> CausalLM:
    config = TransformerConfig(
        vocab_size=VOCAB,
        d_model=d_model,
        n_layers=2,
        n_heads=2,
        max_seq_len=SEQ,
        parametrization=parametrization,
    )
    return CausalLM(model=config, lr=lr, warmup_steps=0, schedule="constant")


def tiny_loader(batch_size: int = 8, n: int = 64) -> DataLoader:
    return DataLoader(RandomTokens(n), batch_size=batch_size, shuffle=False)


class RankSlice(Sampler[int]):
    """Indices ``rank, rank + W, ...`` in order, with the rank read when iterating (after the
    process group exists): with a per-rank batch of B/W, step s sees the same global batch as a
    single process with batch B, independent of Lightning's or anyone's sampler replacement."""

    def __init__(self, n: int) -> None:
        self.n = n

    def _rank_world(self) -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._rank_world()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        rank, world = self._rank_world()
        return len(range(rank, self.n, world))


def sliced_loader(batch_size: int, n: int = 64) -> DataLoader:
    """Loader whose global batch per step does not depend on the number of processes (use with
    ``Trainer(use_distributed_sampler=False)``)."""
    return DataLoader(RandomTokens(n), batch_size=batch_size, sampler=RankSlice(n))
