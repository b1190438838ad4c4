"""The masked-LM data module reads token shards: its blocks hold the prepared token stream
exactly once per epoch on one and on two ranks, its tokenizer and ids are those of the
in-memory module it replaced, and an encoder trains from a prepared folder through the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from lit_unitscale.callbacks.resumable_sampling import ResumableSampler
from lit_unitscale.data import MaskedLMData
from lit_unitscale.data.prepare import prepare
from lit_unitscale.data.splits import SPLITS, contiguous_split
from lit_unitscale.data.text_corpora import text_lines
from lit_unitscale.data.text_tokenizers import cached_tokenizer
from tests.conftest import ROOT

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "<unk>", "Ünï"]
CONFIGS = ROOT / "tests" / "tasks" / "configs"


def _encode(lines: list[str], tokenizer_file: Path) -> list[int]:
    """The in-memory module's ids: PTB's <unk> as [UNK], each line encoded, concatenated."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    lines = [line.replace("<unk>", "[UNK]") for line in lines]
    return [i for e in tokenizer.encode_batch(lines, add_special_tokens=False) for i in e.ids]


def _epoch(dataset, world: int, seed: int, epoch: int) -> list[list[int]]:
    """The indices each of ``world`` ranks reads in one training epoch."""
    ranks = []
    for rank in range(world):
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    return ranks


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lines=st.lists(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
        min_size=20,
        max_size=60,
    ),
    seq_len=st.integers(3, 20),
    limit=st.none() | st.integers(1, 200),
    seed=st.integers(0, 3),
)
def test_blocks_hold_the_prepared_stream_once_per_epoch_on_one_and_two_ranks(
    tmp_path_factory, lines, seq_len, limit, seed
):
    tmp = tmp_path_factory.mktemp("corpus")
    (tmp / "text.txt").write_text("\n".join(lines) + "\n")
    data = MaskedLMData(
        corpus=str(tmp / "text.txt"), vocab_size=60, seq_len=seq_len, max_train_tokens=limit
    )
    cls, sep = data.tokenizer.token_to_id("[CLS]"), data.tokenizer.token_to_id("[SEP]")
    for split, split_lines in contiguous_split(lines).items():
        stream = _encode(split_lines, data.tokenizer_file)
        if split == "train" and limit is not None:
            stream = stream[:limit]
        assert data.tokens[split].tolist() == stream
        dataset = data.datasets[split]
        examples = [dataset[i] for i in range(len(dataset))]
        assert [index for index, _ in examples] == list(range(len(dataset)))
        for _, ids in examples:
            assert ids[0] == cls and ids[-1] == sep and 3 <= len(ids) <= seq_len
        assert [t for _, ids in examples for t in ids[1:-1].tolist()] == stream
    train = data.datasets["train"]
    for world in (1, 2):
        ranks = _epoch(train, world, seed, epoch=0)
        # Ranks read disjoint blocks, round-robin over one seeded order whose end is padded
        # with its start (as DistributedSampler pads it) so that every rank reads as many.
        order = [i for step in zip(*ranks, strict=True) for i in step]
        pad = len(order) - len(train)
        assert 0 <= pad < world and order[len(train) :] == order[:pad]
        assert sorted(order[: len(train)]) == list(range(len(train)))
        # A run resumed after k examples reads the rest of the same order.
        k = world * (len(train) // (2 * world))
        resumed = [
            list(ResumableSampler(train, num_replicas=world, rank=r, seed=seed, start=k))
            for r in range(world)
        ]
        assert [i for step in zip(*resumed, strict=True) for i in step] == order[k:]


def test_tokenizer_and_ids_are_those_of_the_in_memory_module(fixtures):
    """The oracle is the path shards replaced: text_lines with <unk> as [UNK], a wordpiece
    tokenizer trained on the training lines, each line encoded."""
    corpus = str(fixtures / "text")
    data = MaskedLMData(corpus=corpus, vocab_size=200, seq_len=24)
    lines = {
        s: [line.replace("<unk>", "[UNK]") for line in v] for s, v in text_lines(corpus).items()
    }
    in_memory = cached_tokenizer("wordpiece", lines["train"], 200)
    assert data.tokenizer_file.read_text() == in_memory.read_text()
    for split in SPLITS:
        assert data.tokens[split].tolist() == _encode(lines[split], in_memory)


def test_an_encoder_trains_from_a_prepared_folder(tmp_path, fixtures):
    from lit_unitscale.cli import main

    shards = tmp_path / "shards"
    prepare([str(fixtures / "text")], shards, "wordpiece", 200, 1, unk_word="<unk>", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared machine run far faster on one thread
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    try:
        main([
            "fit", "--config", str(CONFIGS / "trainer.yaml"), "--config", str(CONFIGS / "mlm.yaml"),
            "--data.init_args.corpus", str(shards), "--trainer.max_steps", "2",
            "--trainer.default_root_dir", str(tmp_path / "run"),
        ])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert list((tmp_path / "run").rglob("*.ckpt"))
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (
        shards / "tokenizer.json"
    ).read_bytes()
