"""Evaluation under several processes: every process runs as many batches, and the repeats
that even them out are flagged, so each example is counted exactly once."""

from __future__ import annotations

import collections

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.data.base import COUNTED, EvalSampler, ListDataset, _MarkedCollate


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), replicas=st.integers(1, 8))
def test_each_example_counted_once_over_equal_shares(n: int, replicas: int) -> None:
    dataset = ListDataset(list(range(n)))
    shares = [list(EvalSampler(dataset, replicas, rank)) for rank in range(replicas)]
    assert len({len(share) for share in shares}) == 1
    counted = collections.Counter(i for share in shares for i, keep in share if keep)
    assert counted == collections.Counter(range(n))
    assert all(0 <= i < n for share in shares for i, _ in share)
    # The same examples in the same places as torch's DistributedSampler deals them.
    for rank, share in enumerate(shares):
        torch_order = torch.utils.data.DistributedSampler(
            dataset, num_replicas=replicas, rank=rank, shuffle=False
        )
        assert [i for i, _ in share] == list(torch_order)


def test_batches_carry_the_flags_beside_the_collated_examples() -> None:
    collate = _MarkedCollate(None)
    batch = collate([({"x": torch.tensor(1)}, True), ({"x": torch.tensor(2)}, False)])
    assert batch["x"].tolist() == [1, 2]
    assert batch[COUNTED].tolist() == [True, False]
