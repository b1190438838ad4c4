"""The saved data position is global: a run resumed on any number of processes deals the rest
of the epoch's order so that every example is seen exactly once (plus the end-of-epoch repeats
that let every process run as many batches), and on the same number of processes it continues
the uninterrupted order exactly. Also the sharded-checkpoint swap and its crash recovery."""

from __future__ import annotations

import collections
import math
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.callbacks.resumable_sampling import ResumableSampler
from lit_unitscale.checkpoints import atomic_folder_save, recover_folder_swaps, swap_in


def _ranks(n: int, world: int, start: int = 0, epoch: int = 0) -> list[list[int]]:
    return [
        list(ResumableSampler(range(n), world, rank, seed=5, epoch=epoch, start=start))
        for rank in range(world)
    ]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 120),
    world=st.integers(1, 8),
    batch=st.integers(1, 6),
    steps=st.integers(0, 40),
    new_world=st.integers(1, 8),
    epoch=st.integers(0, 3),
)
def test_resume_on_any_world_size_sees_every_example_once(
    n: int, world: int, batch: int, steps: int, new_world: int, epoch: int
) -> None:
    first = _ranks(n, world, epoch=epoch)
    steps = min(steps, len(first[0]) // batch)  # whole micro-batches of the first run
    seen = [i for b in range(steps) for rank in first for i in rank[b * batch : (b + 1) * batch]]
    consumed = steps * batch * world  # what the checkpoint records
    rest = _ranks(n, new_world, start=consumed, epoch=epoch)
    assert len({len(r) for r in rest}) == 1, "ranks would run different numbers of batches"
    counts = collections.Counter(seen + [i for r in rest for i in r])
    assert set(counts) == set(range(n))
    remaining = max(n - consumed, 0)
    padding = math.ceil(remaining / new_world) * new_world - remaining
    assert sum(counts.values()) - n == padding + max(consumed - n, 0)
    if consumed <= n:
        # Before the epoch's padding, nothing is seen twice.
        assert len(set(seen)) == len(seen)
    if new_world == world:
        whole = _ranks(n, world, epoch=epoch)
        assert rest == [r[consumed // world :] for r in whole]


def _folder(path: Path, text: str) -> None:
    path.mkdir(parents=True)
    (path / "shard").write_text(text)


def test_folder_save_replaces_the_previous_one_and_leaves_nothing_beside_it(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    _folder(target, "old")
    calls = []
    atomic_folder_save(
        lambda staged: _folder(staged, "new"),
        target,
        swapper=True,
        flusher=True,
        barrier=lambda: calls.append("barrier"),
    )
    assert (target / "shard").read_text() == "new"
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert calls == ["barrier"] * 3


def test_a_write_that_fails_leaves_the_previous_folder(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    _folder(target, "old")

    def write(staged: Path) -> None:
        _folder(staged, "half")
        raise OSError("disk full")

    try:
        atomic_folder_save(write, target, swapper=True, flusher=False, barrier=lambda: None)
    except OSError:
        pass
    assert (target / "shard").read_text() == "old"
    recover_folder_swaps(tmp_path)  # the next run's setup
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_a_crash_between_the_two_renames_is_put_back(tmp_path: Path) -> None:
    # Where the filesystem cannot exchange two folders atomically, the old one is parked first.
    _folder(tmp_path / ".last.ckpt.previous", "old")
    _folder(tmp_path / ".last.ckpt.partial", "new")
    assert recover_folder_swaps(tmp_path) == [tmp_path / "last.ckpt"]
    assert (tmp_path / "last.ckpt" / "shard").read_text() == "old"
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_a_folder_replaces_a_single_file_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_text("one file")
    _folder(tmp_path / "staged", "shards")
    swap_in(tmp_path / "staged", target)
    assert (target / "shard").read_text() == "shards"
    assert os.listdir(tmp_path) == ["last.ckpt"]
