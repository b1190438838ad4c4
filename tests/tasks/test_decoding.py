"""Greedy and beam-search decoding on hand-built next-token distributions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.tasks.decoding import beam_search, greedy_decode

BOS, EOS, PAD, A, B = 0, 1, 2, 3, 4
V = 5


def table_step(table: dict[tuple[int, ...], dict[int, float]]):
    """Next-token logits (log-probabilities) looked up by the prefix after <bos>."""

    def step(prefix: torch.Tensor) -> torch.Tensor:
        out = torch.full((prefix.shape[0], V), -1e9)
        for row, ids in enumerate(prefix.tolist()):
            for token, p in table.get(tuple(ids[1:]), {EOS: 1.0}).items():
                out[row, token] = math.log(p)
        return out

    return step


# Greedy takes A (0.6), then A (0.36), then <eos>: p = 0.216. "B <eos>" has p = 0.36.
TABLE = {
    (): {A: 0.6, B: 0.4},
    (A,): {A: 0.36, B: 0.34, EOS: 0.30},
    (A, A): {EOS: 1.0},
    (A, B): {EOS: 1.0},
    (B,): {EOS: 0.9, A: 0.05, B: 0.05},
}


def test_beam_finds_a_more_likely_sequence_than_greedy():
    step = table_step(TABLE)
    greedy = greedy_decode(step, 1, BOS, EOS, PAD, max_len=5)
    assert greedy.tolist() == [[A, A, EOS]]
    ids, scores = beam_search(step, 1, BOS, EOS, PAD, max_len=5, beam_size=2)
    assert ids.tolist() == [[B, EOS]]
    assert scores.item() == pytest.approx(math.log(0.36), abs=1e-5)


def test_beam_of_one_is_greedy_and_batches_are_independent():
    step = table_step(TABLE)
    ids, _ = beam_search(step, 3, BOS, EOS, PAD, max_len=5, beam_size=1)
    assert ids.tolist() == [[A, A, EOS]] * 3


def test_greedy_pads_after_eos_and_stops_at_max_len():
    step = table_step({(): {A: 0.9, EOS: 0.1}, (A,): {A: 0.9}, (A, A): {A: 1.0}, (A, A, A): {A: 1}})
    assert greedy_decode(step, 1, BOS, EOS, PAD, max_len=4).tolist() == [[A, A, A, A]]

    def two_rows(prefix: torch.Tensor) -> torch.Tensor:
        # row 0 ends at once; row 1 says A, B, then ends
        out = torch.full((2, V), -1e9)
        t = prefix.shape[1]
        out[0, EOS] = 0.0
        out[1, (A, B, EOS)[min(t - 1, 2)]] = 0.0
        return out

    ids = greedy_decode(two_rows, 2, BOS, EOS, PAD, max_len=6)
    assert ids.tolist() == [[EOS, PAD, PAD], [A, B, EOS]]


def test_wide_beam_is_exact_search():
    g = torch.Generator().manual_seed(0)
    table = {}
    for length in range(3):
        for prefix in itertools.product((A, B), repeat=length):
            p = torch.rand(3, generator=g) + 0.05
            p = (p / p.sum()).tolist()
            table[prefix] = {EOS: p[0], A: p[1], B: p[2]}
    # every complete sequence of up to 3 tokens (a 3-token one may end without <eos>)
    best, best_seq = -math.inf, None
    for length in range(4):
        for body in itertools.product((A, B), repeat=length):
            logp = sum(math.log(table[body[:i]][t]) for i, t in enumerate(body))
            seq = list(body)
            if length < 3:
                logp += math.log(table[body][EOS])
                seq.append(EOS)
            if logp > best:
                best, best_seq = logp, seq
    ids, scores = beam_search(table_step(table), 1, BOS, EOS, PAD, max_len=3, beam_size=8)
    assert ids[0, : len(best_seq)].tolist() == best_seq
    assert scores.item() == pytest.approx(best, abs=1e-5)


def random_step(seed: int, vocab: int, device: str = "cpu"):
    """Next-token logits drawn from a hash of the whole prefix, so any search may revisit it."""

    def step(prefix: torch.Tensor) -> torch.Tensor:
        rows = []
        for ids in prefix.tolist():
            g = torch.Generator().manual_seed(hash((seed, *ids)) % 2**31)
            rows.append(torch.randn(vocab, generator=g) * 3)
        return torch.stack(rows).to(device)

    return step


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    batch=st.integers(1, 3),
    beam=st.integers(1, 4),
    max_len=st.integers(1, 6),
    penalty=st.sampled_from([0.0, 1.0]),
)
def test_stepping_past_the_end_changes_nothing(seed, batch, beam, max_len, penalty):
    """What lets sharded processes agree on stopping: a search that keeps stepping after its
    own sequences are done (padding in, ignored) returns the same sequences and scores."""
    step = random_step(seed, V)
    early = greedy_decode(step, batch, BOS, EOS, PAD, max_len)
    late = greedy_decode(step, batch, BOS, EOS, PAD, max_len, stop=None)
    assert late.shape == (batch, max_len)
    assert late[:, : early.shape[1]].tolist() == early.tolist()
    assert (late[:, early.shape[1] :] == PAD).all()

    early, early_scores = beam_search(step, batch, BOS, EOS, PAD, max_len, beam, penalty)
    late, late_scores = beam_search(step, batch, BOS, EOS, PAD, max_len, beam, penalty, stop=None)
    assert late[:, : early.shape[1]].tolist() == early.tolist()
    assert (late[:, early.shape[1] :] == PAD).all()
    assert late_scores.tolist() == early_scores.tolist()


def test_decoding_builds_every_tensor_on_the_scorers_device():
    """On the meta device any tensor made on the CPU, and any read of a value back to the host,
    fails: with ``stop=None`` the search does neither."""

    def step(prefix: torch.Tensor) -> torch.Tensor:
        assert prefix.device.type == "meta"
        return torch.zeros(prefix.shape[0], V, device="meta")

    ids = greedy_decode(step, 3, BOS, EOS, PAD, 4, device="meta", stop=None)
    assert ids.device.type == "meta" and ids.shape == (3, 4)
    ids, scores = beam_search(step, 3, BOS, EOS, PAD, 4, beam_size=2, device="meta", stop=None)
    assert ids.device.type == "meta" and ids.shape == (3, 4)
    assert scores.device.type == "meta" and scores.shape == (3,)
