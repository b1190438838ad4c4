"""Training on token shards through the real CLI: two DDP processes read disjoint blocks whose
union is the training split exactly once per epoch, and a run killed with SIGKILL mid-epoch
then resumed with ``--ckpt_path last`` trains on exactly the batches of an uninterrupted run
(compared by hashes of every example of every step)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lit_unitscale.data import CausalLMData
from lit_unitscale.data.prepare import prepare
from tests.conftest import ROOT
from tests.data.helpers import row_hash
from tests.reliability.runs import RECIPE, popen

BLOCKS = 64  # training blocks of seq_len 16: whole batches for 1 and 2 processes of 4
LIMIT = BLOCKS * 16 + 1


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    prepare([str(ROOT / "tests/fixtures/data/text")], tmp_path / "shards", "word", progress=False)
    return tmp_path / "shards"


def _recipe(tmp: Path, corpus: Path, max_steps: int, sleep: float = 0.0, **trainer) -> Path:
    data = yaml.safe_load(RECIPE.read_text())
    data["trainer"] |= {"max_steps": max_steps, "default_root_dir": str(tmp / "run"), **trainer}
    data["trainer"]["callbacks"].append(
        {
            "class_path": "tests.data.helpers.BatchHashRecorder",
            "init_args": {"path": str(tmp / "batches.jsonl"), "sleep": sleep},
        }
    )
    data["data"]["init_args"] = {
        "corpus": str(corpus),
        "seq_len": 16,
        "batch_size": 4,
        "max_train_tokens": LIMIT,
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _records(tmp: Path, rank: int = 0) -> list[dict]:
    path = tmp / f"batches.jsonl.{rank}"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _blocks(corpus: Path) -> list[str]:
    data = CausalLMData(corpus=str(corpus), seq_len=16, max_train_tokens=LIMIT)
    train = data.datasets["train"]
    assert len(train) == BLOCKS
    return [row_hash(train[i]["input_ids"]) for i in range(len(train))]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_processes_read_disjoint_blocks_covering_the_split_once(tmp_path, corpus):
    config = _recipe(tmp_path, corpus, max_steps=-1, max_epochs=2, val_check_interval=None)
    proc = popen("fit", "--config", str(config), "--config", "recipes/strategy/ddp.yaml")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    blocks = Counter(_blocks(corpus))
    assert len(blocks) == BLOCKS, "fixture blocks are not distinct"
    ranks = [_records(tmp_path, rank) for rank in (0, 1)]
    for epoch in (0, 1):
        seen = [[h for r in records if r["epoch"] == epoch for h in r["rows"]] for records in ranks]
        assert len(seen[0]) == len(seen[1]) == BLOCKS // 2
        assert not set(seen[0]) & set(seen[1]), "the two processes read the same block"
        assert Counter(seen[0] + seen[1]) == blocks  # the whole split, each block once
    first = [h for r in ranks[0] if r["epoch"] == 0 for h in r["rows"]]
    second = [h for r in ranks[0] if r["epoch"] == 1 for h in r["rows"]]
    assert first != second, "the epochs were not reshuffled"


def _wait_for(condition, proc, timeout: float = 400) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended first:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_sees_the_uninterrupted_batches(tmp_path, corpus):
    steps = 24  # 16 steps per epoch: the kill lands mid-epoch, the resume crosses an epoch
    reference = tmp_path / "reference"
    reference.mkdir()
    proc = popen("fit", "--config", str(_recipe(reference, corpus, steps)))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    expected = {r["step"]: r["rows"] for r in _records(reference)}
    assert sorted(expected) == list(range(steps))

    killed = tmp_path / "killed"
    killed.mkdir()
    config = _recipe(killed, corpus, steps, sleep=0.3)
    command = ("fit", "--config", str(config), "--ckpt_path", "last")
    last = killed / "run" / "checkpoints" / "last.ckpt"
    proc = popen(*command)
    # The recipe checkpoints every 3 steps: kill after the step-9 one, before step 16.
    _wait_for(lambda: len(_records(killed)) >= 11 and last.exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(_records(killed))
    assert before < 16, "the kill came after the epoch ended"
    proc = popen(*command)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    records = _records(killed)
    resumed = {r["step"]: r["rows"] for r in records[before:]}
    assert min(resumed) < before <= 16, "the resume did not start mid-epoch"
    assert max(resumed) == steps - 1
    for step, rows in resumed.items():
        assert rows == expected[step], f"step {step} saw other examples after the resume"
