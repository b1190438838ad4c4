"""Runs a list of training jobs through the CLI in this process and records what the tests check.

    python tests/strategies/_worker.py JOBS.json OUT_DIR

Started once per rank by the tests (2 processes with RANK/LOCAL_RANK/WORLD_SIZE set, so
Lightning does not spawn) or once alone; every job is one ``Trainer.fit`` built from
``tests/strategies/tiny.yaml`` plus overlays, so the processes (and DeepSpeed's import) are
shared by all jobs. Each rank writes ``OUT_DIR/<job>.rank<r>.json``: the loss of every
micro-batch, the RMS of every parameter's gradient as the optimizer sees it, each validation's
metrics and decoding steps, and errors.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "strategies" / "tiny.yaml"


def _clean(name: str) -> str:
    for prefix in ("_forward_module.", "module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name.replace("_checkpoint_wrapped_module.", "")


class Probe(L.Callback):
    """Records micro-batch losses and the full gradient RMS per parameter before each step."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []  # [optimizer step, loss]
        self.grads: list[dict[str, Any]] = []
        self.sampler: list[int] = []
        # Per validation run: its metrics and, per decoded batch, [the step at which this
        # rank's own sequences were all done, the steps decoding ran].
        self.validations: list[dict[str, Any]] = []
        self._decodes: list[list[int]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self._decodes = []
        decode = getattr(pl_module, "decode", None)
        if decode is None or hasattr(decode, "probed"):
            return
        eos = pl_module.special().eos

        def probed(*args, **kwargs):
            ids = decode(*args, **kwargs)
            rows = ids.tolist()
            ends = [row.index(eos) + 1 if eos in row else ids.shape[1] for row in rows]
            self._decodes.append([max(ends), ids.shape[1]])
            return ids

        probed.probed = True
        pl_module.decode = probed

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "val/" in k}
        self.validations.append(
            {"sanity": trainer.sanity_checking, "metrics": metrics, "decodes": self._decodes}
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.sampler:
            self.sampler = batch["input_ids"][:, 0].tolist()
        self._step = trainer.global_step  # the optimizer step this micro-batch contributes to

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning hands hooks the loss divided by the accumulation count.
        loss = outputs["loss"] * trainer.accumulate_grad_batches
        self.losses.append([self._step, float(loss.detach().float())])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and not engine.is_gradient_accumulation_boundary():
            return
        rms = {}
        for name, param in pl_module.named_parameters():
            grad = _full_grad(param, engine is not None)
            if grad is None:
                continue
            rms[_clean(name)] = float(grad.float().pow(2).mean().sqrt())
        self.grads.append({"step": trainer.global_step, "rms": rms})


def _full_grad(param: torch.Tensor, deepspeed: bool) -> torch.Tensor | None:
    if deepspeed:
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)
    grad = param.grad
    if grad is None:
        return None
    if hasattr(grad, "full_tensor"):
        return grad.full_tensor()
    return grad


def run_job(job: dict[str, Any], out: Path, rank: int) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_unitscale.cli import make_cli

    args = ["--config", str(TINY)]
    for overlay in job.get("overlays", []):
        args += ["--config", str(ROOT / overlay)]
    args += [f"--{k}={v}" for k, v in job.get("set", {}).items()]
    # Keep the run's files (config.yaml, checkpoints) out of the repository root.
    args += [f"--trainer.default_root_dir={out / job['name']}"]
    result: dict[str, Any] = {"rank": rank}
    probe = Probe()
    try:
        cli = make_cli(args, run=False)
        trainer = cli.trainer
        trainer.callbacks.append(probe)
        if job.get("save_every"):
            trainer.callbacks.append(
                ModelCheckpoint(
                    dirpath=str(out / job["name"] / "ckpt"),
                    filename="{step}",
                    every_n_train_steps=job["save_every"],
                    save_top_k=-1,
                )
            )
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=job.get("resume"))
        result["global_step"] = trainer.global_step
        result["world_size"] = trainer.world_size
        result["precision"] = type(trainer.precision_plugin).__name__
        # Hidden linears set to real FP8 inside the strategy's wrapped model.
        result["fp8_linears"] = sum(
            getattr(m, "matmul", None) == "fp8" for m in trainer.lightning_module.modules()
        )
        result["strategy"] = type(trainer.strategy).__name__
    except BaseException as error:  # recorded for the test to show
        result["error"] = "".join(traceback.format_exception(error))[-4000:]
    result["losses"] = probe.losses
    result["grads"] = probe.grads
    result["first_batch"] = probe.sampler
    result["validations"] = probe.validations
    (out / f"{job['name']}.rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    os.chdir(ROOT)
    for job in jobs:
        run_job(job, out, rank)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()


if __name__ == "__main__":
    main()
