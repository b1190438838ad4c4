"""Runs training jobs through the CLI in one process group and records what the resume tests
check: every micro-batch's loss and the hashes of the examples in it.

    python tests/reliability/_resume_worker.py JOBS.json OUT_DIR

Started once per rank (RANK/LOCAL_RANK/WORLD_SIZE set, so Lightning does not spawn); every job
is one ``Trainer.fit`` of ``tests/strategies/tiny.yaml`` plus overlays. A job may first wait for
a file (a checkpoint) that a group running beside this one writes. Beyond the strategy
tests' worker, a job may deliver SIGTERM to one rank at a chosen micro-batch, or end every
process with SIGKILL in the middle of its n-th sharded checkpoint save (the last job of a
group: nothing after it runs). Each rank writes ``OUT_DIR/<job>.rank<r>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.strategies._worker import TINY  # noqa: E402


def row_hash(row: Any) -> str:
    """A stable id of one example (its token ids)."""
    return hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16]


class Recorder(L.Callback):
    """Per micro-batch: [epoch, optimizer step, loss, example hashes]."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = (trainer.current_epoch, trainer.global_step)
        self._hashes = [row_hash(row) for row in batch["input_ids"].cpu()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"].detach()) * trainer.accumulate_grad_batches
        self.batches.append([*self._start, loss, self._hashes])


class SignalAt(L.Callback):
    """Send this process SIGTERM after its ``micro_batch``-th micro-batch (0-based, counted
    over the run) when it is ``rank``."""

    def __init__(self, micro_batch: int, rank: int) -> None:
        self.micro_batch, self.rank, self.seen = micro_batch, rank, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seen == self.micro_batch and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)
        self.seen += 1


class KillInSave(L.Callback):
    """SIGKILL every process part-way through writing its ``save``-th checkpoint (1-based):
    FSDP2 after the shards, before the metadata; DeepSpeed after the model states, before the
    optimizer partitions."""

    def __init__(self, save: int) -> None:
        self.save, self.saves = save, 0

    def setup(self, trainer, pl_module, stage) -> None:
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        armed = self

        def die() -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        finish = FileSystemWriter.finish

        def finish_then(writer, *args, **kwargs):
            if armed.saves == armed.save:
                die()
            return finish(writer, *args, **kwargs)

        FileSystemWriter.finish = finish_then
        try:
            from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
                TorchCheckpointEngine,
            )
        except ImportError:
            return
        save = TorchCheckpointEngine.save

        def save_then(engine, state_dict, path, *args, **kwargs):
            if armed.saves == armed.save and "optim_states" in str(path):
                die()
            return save(engine, state_dict, path, *args, **kwargs)

        TorchCheckpointEngine.save = save_then

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves += 1


def run_job(job: dict[str, Any], out: Path, rank: int) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_unitscale.cli import make_cli

    args = ["--config", str(TINY)]
    for overlay in job.get("overlays", []):
        args += ["--config", str(ROOT / overlay)]
    args += [f"--{k}={v}" for k, v in job.get("set", {}).items()]
    args += [f"--trainer.default_root_dir={out / job['name']}"]
    result: dict[str, Any] = {"rank": rank}
    recorder = Recorder()
    try:
        cli = make_cli(args, run=False)
        trainer = cli.trainer
        trainer.callbacks.append(recorder)
        if job.get("save_every"):
            trainer.callbacks.append(
                ModelCheckpoint(
                    dirpath=str(out / job["name"] / "ckpt"),
                    filename="{step}",
                    every_n_train_steps=job["save_every"],
                    save_top_k=-1,
                )
            )
        if job.get("last_every"):  # only last.ckpt, overwritten at every save
            trainer.callbacks.append(
                ModelCheckpoint(
                    dirpath=str(out / job["name"] / "checkpoints"),
                    every_n_train_steps=job["last_every"],
                    save_top_k=0,
                    save_last=True,
                )
            )
        if "signal_at" in job:
            trainer.callbacks.append(SignalAt(**job["signal_at"]))
        if "kill_in_save" in job:
            trainer.callbacks.append(KillInSave(job["kill_in_save"]))
        if job.get("dataset") and rank == 0:
            cli.datamodule.setup("fit")
            rows = cli.datamodule.datasets["train"]
            result["dataset"] = [row_hash(rows[i]["input_ids"]) for i in range(len(rows))]
        resume = job.get("resume")
        trainer.fit(
            cli.model, datamodule=cli.datamodule, ckpt_path=str(out / resume) if resume else None
        )
        result["global_step"] = trainer.global_step
        result["world_size"] = trainer.world_size
    except BaseException as error:  # recorded for the test to show
        result["error"] = "".join(traceback.format_exception(error))[-4000:]
        result["message"] = str(error)
    result["batches"] = recorder.batches
    (out / f"{job['name']}.rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    import torch

    jobs = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    os.chdir(ROOT)
    for job in jobs:
        if job.get("wait_for"):  # written by a group running beside this one
            deadline = time.monotonic() + 900
            while not (out / job["wait_for"]).exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        run_job(job, out, rank)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()


if __name__ == "__main__":
    main()
