"""Resuming on another number of processes, stopping mid-accumulation and dying mid-save, on
real gloo process groups: one of 4 and one of 2 processes side by side, each resuming the
other's checkpoints (see ``_resume_worker.py``).

The tiny recipe on 48 training examples (sequences of 16 tokens), global batch 8: 4 processes
× batch 2, or 2 processes × batch 2 × 2 accumulated micro-batches; 6 optimizer steps per
epoch. Each micro-batch records the hashes of its examples.

- Resume 4 → 2 and 2 → 4 (DDP, FSDP2) from step 3: over epoch 0 the two runs together see every
  example exactly once, and the losses equal an uninterrupted 2-process run's (fp32; within
  5e-6, as the strategy tests; measured ≤ 1e-6).
- SIGTERM on one rank in the middle of an accumulation: both ranks stop together at a step
  boundary, and the resumed run's losses equal the uninterrupted run's bit for bit.
- SIGKILL of every process in the middle of the second sharded save of ``last.ckpt`` (FSDP2,
  ZeRO-2): ``last.ckpt`` still holds the first save, loads, and (FSDP2, on 4 processes) resumes.
- A ZeRO checkpoint written by 4 processes is refused on 2 in one line naming the universal
  checkpoint route.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_resume_worker.py")
STEPS, SAVE, PER_EPOCH = 7, 3, 6
COMMON = {
    "trainer.enable_checkpointing": "false",
    "data.init_args.max_train_tokens": 48 * 16 + 1,
    "data.init_args.batch_size": 2,
}
FOUR = {**COMMON, "trainer.devices": 4}
TWO = {**COMMON, "trainer.devices": 2, "trainer.accumulate_grad_batches": 2}
DDP, FSDP, ZERO2 = (
    ["recipes/strategy/ddp.yaml"],
    ["recipes/strategy/fsdp.yaml"],
    ["recipes/strategy/deepspeed-zero2.yaml"],
)


def _job(name: str, overlays: list[str], shape: dict, steps: int, **extra: object) -> dict:
    settings = {**shape, "trainer.max_steps": steps}
    return {"name": name, "overlays": overlays, "set": settings, **extra}


def _ckpt(job: str, step: int = SAVE) -> str:
    return f"{job}/ckpt/step={step}.ckpt"


# Two groups side by side; a job waits for the checkpoint it resumes (swapped in whole).
GROUPS: list[tuple[int, list[dict]]] = [
    (
        4,
        [
            _job("ddp4", DDP, FOUR, SAVE, save_every=SAVE, dataset=True),
            _job("fsdp4", FSDP, FOUR, SAVE, save_every=SAVE),
            _job("zero2_4", ZERO2, FOUR, SAVE, save_every=SAVE),
            _job("ddp_2to4", DDP, FOUR, STEPS, resume=_ckpt("ddp2"), wait_for=_ckpt("ddp2")),
            _job("fsdp_2to4", FSDP, FOUR, STEPS, resume=_ckpt("fsdp2"), wait_for=_ckpt("fsdp2")),
            _job(
                "fsdp_killed_4",
                FSDP,
                FOUR,
                4,
                resume="fsdp_kill/checkpoints/last.ckpt",
                wait_for="group1.done",
            ),
            _job("zero2_kill", ZERO2, FOUR, 6, last_every=2, kill_in_save=2),
        ],
    ),
    (
        2,
        [
            _job("ddp2", DDP, TWO, STEPS, save_every=SAVE),
            _job("fsdp2", FSDP, TWO, STEPS, save_every=SAVE),
            _job("ddp_4to2", DDP, TWO, STEPS, resume=_ckpt("ddp4"), wait_for=_ckpt("ddp4")),
            _job("fsdp_4to2", FSDP, TWO, STEPS, resume=_ckpt("fsdp4"), wait_for=_ckpt("fsdp4")),
            _job(
                "zero2_4to2",
                ZERO2,
                TWO,
                STEPS,
                resume=_ckpt("zero2_4"),
                wait_for=_ckpt("zero2_4"),
            ),
            # Micro-batch 2 is the first half of step 1 (0-based): mid-accumulation.
            _job("ddp_stop", DDP, TWO, STEPS, signal_at={"micro_batch": 2, "rank": 1}),
            _job("ddp_stop_resume", DDP, TWO, STEPS, resume="ddp_stop/checkpoints/last.ckpt"),
            _job("fsdp_kill", FSDP, TWO, 6, last_every=2, kill_in_save=2),
        ],
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(world: int, jobs: list[dict], out: Path, env: dict, index: int) -> list:
    """Start one group of ``world`` processes running ``jobs``."""
    path = out / f"jobs{index}.json"
    path.write_text(json.dumps(jobs))
    port = str(_free_port())
    procs = []
    for rank in range(world):
        rank_env = {
            **env,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world),
            "NODE_RANK": "0",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        log = (out / f"log{index}.rank{rank}").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(path), str(out)],
                env=rank_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _wait(groups: list[list], out: Path) -> None:
    """Wait for every group; a SIGKILLed rank ends its group, as a scheduler ends the job's
    other tasks. ``group<i>.done`` marks a group's end for the jobs waiting on it."""
    deadline = time.monotonic() + 900
    running = set(range(len(groups)))
    while running and time.monotonic() < deadline:
        for index in sorted(running):
            procs = groups[index]
            killed = any(p.poll() == -signal.SIGKILL for p in procs)
            if killed or all(p.poll() is not None for p in procs):
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                (out / f"group{index}.done").touch()
                running.discard(index)
        time.sleep(0.2)
    for procs in groups:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Runs(NamedTuple):
    records: dict[str, list[dict]]
    """Job name -> the record of each rank (missing for a job killed before writing it)."""
    out: Path
    """The jobs' run directories."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    out = tmp_path_factory.mktemp("resume")
    env = dict(os.environ)
    env["LIT_UNITSCALE_CACHE"] = str(out / "cache")
    env.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/lit_unitscale/torch_extensions")
    )
    env.pop("SLURM_NTASKS", None)
    groups = [_start(world, jobs, out, env, i) for i, (world, jobs) in enumerate(GROUPS)]
    _wait(groups, out)
    records: dict[str, list[dict]] = {}
    for world, jobs in GROUPS:
        for job in jobs:
            files = [out / f"{job['name']}.rank{r}.json" for r in range(world)]
            records[job["name"]] = [json.loads(f.read_text()) for f in files if f.exists()]
    return Runs(records, out)


def _ok(records: list[dict], world: int) -> list[dict]:
    assert len(records) == world, "a rank wrote no record"
    for record in records:
        assert "error" not in record, record["error"]
    return records


def _step_losses(records: list[dict]) -> dict[int, float]:
    """Loss per optimizer step: mean over ranks and micro-batches (equal token counts)."""
    per_step = collections.defaultdict(list)
    for record in records:
        for _, step, loss, _ in record["batches"]:
            per_step[step].append(loss)
    return {step: sum(v) / len(v) for step, v in sorted(per_step.items())}


def _epoch_examples(*runs: list[dict], epoch: int = 0) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    for records in runs:
        for record in records:
            for batch_epoch, _, _, hashes in record["batches"]:
                if batch_epoch == epoch:
                    seen.update(hashes)
    return seen


@pytest.mark.parametrize(
    ("first", "resumed", "first_world", "world"),
    [
        ("ddp4", "ddp_4to2", 4, 2),
        ("fsdp4", "fsdp_4to2", 4, 2),
        ("ddp2", "ddp_2to4", 2, 4),
        ("fsdp2", "fsdp_2to4", 2, 4),
    ],
)
def test_resume_on_another_world_size_sees_every_example_once(
    runs, first: str, resumed: str, first_world: int, world: int
) -> None:
    dataset = collections.Counter(runs.records["ddp4"][0]["dataset"])
    assert sum(dataset.values()) == 48
    before = [
        {**r, "batches": [b for b in r["batches"] if b[1] < SAVE]}
        for r in _ok(runs.records[first], first_world)
    ]
    after = _ok(runs.records[resumed], world)
    assert all(r["global_step"] == STEPS for r in after)
    assert min(b[1] for r in after for b in r["batches"]) == SAVE
    # Epoch 0: the steps before the checkpoint on one world size, the rest on the other.
    assert _epoch_examples(before, after) == dataset
    # Epoch 1 starts on the new world size with a fresh permutation: no example twice.
    assert max(_epoch_examples(after, epoch=1).values()) == 1
    # The same global batches, so the losses of an uninterrupted 2-process run.
    reference = _step_losses(_ok(runs.records["fsdp2" if "fsdp" in first else "ddp2"], 2))
    losses = {**_step_losses(before), **_step_losses(after)}
    assert sorted(losses) == list(range(STEPS))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=5e-6), step


def test_stop_signal_mid_accumulation_stops_at_a_step_boundary_and_resumes_exactly(runs) -> None:
    stopped = _ok(runs.records["ddp_stop"], 2)
    resumed = _ok(runs.records["ddp_stop_resume"], 2)
    reference = _ok(runs.records["ddp2"], 2)
    # Signal after micro-batch 2 (mid step 1) on rank 1 only; ranks agree at the boundary that
    # ends step 2 and stop at the next one, having trained whole steps.
    assert [r["global_step"] for r in stopped] == [3, 3]
    for record in stopped:
        assert [b[1] for b in record["batches"]] == [0, 0, 1, 1, 2, 2]
    for whole, first, second in zip(reference, stopped, resumed, strict=True):
        assert first["batches"] + second["batches"] == whole["batches"]


@pytest.mark.parametrize(("job", "world"), [("fsdp_kill", 2), ("zero2_kill", 4)])
def test_kill_9_during_a_sharded_save_keeps_the_previous_checkpoint(
    runs, job: str, world: int
) -> None:
    import torch

    from lit_unitscale.checkpoints import load_checkpoint

    # Ranks the kill reached wrote nothing; the others lost their peers.
    assert all("error" in r for r in runs.records[job]), "the run was meant to die while saving"
    folder = runs.out / job / "checkpoints"
    staged = folder / ".last.ckpt.partial"
    assert staged.is_dir(), "the kill did not land mid-save"
    checkpoint = load_checkpoint(folder / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"]
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_fsdp2_resumes_from_the_checkpoint_a_kill_left_on_another_world_size(runs) -> None:
    resumed = _ok(runs.records["fsdp_killed_4"], 4)
    assert all(r["global_step"] == 4 for r in resumed)
    reference = _step_losses(_ok(runs.records["fsdp2"], 2))
    losses = _step_losses(resumed)
    assert sorted(losses) == [2, 3]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=5e-6), step


def test_deepspeed_world_size_change_names_the_universal_checkpoint_route(runs) -> None:
    records = runs.records["zero2_4to2"]
    assert len(records) == 2
    for record in records:
        message = record.get("message", "")
        assert "written by 4 processes cannot be resumed on 2" in message, record.get("error")
        assert "ds_to_universal" in message and "load_universal" in message
        assert "\n" not in message
