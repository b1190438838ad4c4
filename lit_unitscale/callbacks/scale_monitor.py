"""ScaleMonitor: per-layer RMS and FP8 range of activations, activation gradients, weights,
weight gradients and updates, every N optimizer steps.

Statistics stay on the device as sums and counts, stack into one tensor and are all-reduced
once per monitor step, so data-parallel and sharded (FSDP2) runs report whole-tensor values
without gathering anything; the only host sync is one ``tolist()`` per monitor step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_unitscale.callbacks.scale_recorder import TENSORS, Key, ScaleRecorder
from lit_unitscale.callbacks.scale_stats import (
    HIST_MIN_EXP,
    histogram,
    resolve_formats,
    summarise,
    summary_fields,
)
from lit_unitscale.callbacks.scale_wandb import HIST_STAT, log_histograms, log_profile
from lit_unitscale.errors import RecipeError

log = logging.getLogger(__name__)

JSONL_NAME = "scales.jsonl"


class ScaleMonitor(L.Callback):
    """Log ``scales/<layer>/<tensor>/<stat>`` every ``every_n_steps`` optimizer steps.

    Layers (``embed``, ``block<i>``, ``final_norm``, ``head``) are found by module type and
    role; tensors are ``act``, ``act_grad``, ``weight``, ``weight_grad`` (before clipping) and
    ``update``; stats are ``rms`` and ``underflow_<fmt>``/``overflow_<fmt>`` fractions, and
    scales.jsonl also holds each tensor's ``log2_hist`` (``{"min_exp", "counts", "zeros"}``,
    see :mod:`lit_unitscale.callbacks.scale_stats`). When a
    monitored tensor holds inf/NaN, ``first_non_finite`` names the layer and tensor that went
    non-finite first in that step and a warning is logged.

    Args:
        every_n_steps: monitor every N optimizer steps (step 0 included); a monitor step costs
            about 0.1 training step on the ptb-small recipe, so 10 costs ~1 % (docs/scales.md).
        formats: formats whose underflow/overflow fractions are reported (``e4m3``, ``e5m2``,
            ``fp16``).
        jsonl: append one JSON line per monitor step to ``scales.jsonl`` in the run directory.
        tensors: tensor kinds to record (default: all five).
        wandb_table: also log the ``scales/profile`` table when a WandbLogger is attached.
        wandb_histograms: also log each tensor's ``log2 |x|`` histogram as a
            ``wandb.Histogram`` when a WandbLogger is attached.
        max_elements: per rank, tensors with more elements than this are sampled (seeded,
            unbiased; one element per block); None: every element, exact.
        seed: seed of the sampling.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        formats: Sequence[str] = ("e4m3", "e5m2", "fp16"),
        jsonl: bool = True,
        tensors: Sequence[str] = TENSORS,
        wandb_table: bool = True,
        wandb_histograms: bool = True,
        max_elements: int | None = 1 << 18,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise RecipeError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if max_elements is not None and max_elements < 1:
            raise RecipeError(f"max_elements must be >= 1 or null, got {max_elements}")
        unknown = sorted(set(tensors) - set(TENSORS))
        if unknown:
            raise RecipeError(f"unknown tensors {unknown}; choose from {list(TENSORS)}")
        self.every_n_steps = every_n_steps
        self.formats = resolve_formats(formats)
        self.jsonl = jsonl
        self.tensors = tuple(tensors)
        self.wandb_table = wandb_table
        self.wandb_histograms = wandb_histograms
        self.max_elements = max_elements
        self.seed = seed
        self.recorder: ScaleRecorder | None = None
        self.run_dir: Path | None = None
        self.last: dict[str, Any] | None = None  # the latest monitor step, as in scales.jsonl
        self.first_non_finite: dict[str, Any] | None = None  # {"step", "layer", "tensor"}
        self._step: int | None = None  # optimizer step being monitored

    # -- lifecycle ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # log_dir broadcasts from rank 0: read it here, where every rank runs.
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._attach(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Tasks build their model in configure_model, which Lightning calls after setup.
        self._attach(pl_module)
        if self.recorder is None:
            raise RecipeError("ScaleMonitor: no embedding, blocks, final norm or head found")

    def _attach(self, pl_module: L.LightningModule) -> None:
        if self.recorder is not None:
            return
        try:
            # The statistics meet on the device the all-reduce runs on, whatever device a
            # tensor's local part lives on (ZeRO offload keeps partitions in host memory).
            device = pl_module.trainer.strategy.root_device if pl_module._trainer else None
            self.recorder = ScaleRecorder(
                pl_module, self.formats, self.tensors, device, self.max_elements, self.seed
            )
        except ValueError:
            return  # model not built yet
        self.recorder.attach()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.detach()
            self.recorder = None
        self._step = None

    # -- one monitor step -----------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.recorder is None:
            return
        if self._step is None and trainer.global_step % self.every_n_steps == 0:
            self._step = trainer.global_step
            self.recorder.active = True

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.recorder is None or self._step is None:
            return
        # DeepSpeed accumulates by itself and calls this after every micro-batch: read the
        # gradients only once they are whole.
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and not engine.is_gradient_accumulation_boundary():
            return
        self.recorder.record_params()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # With gradient accumulation, statistics add up until the optimizer has stepped.
        if self.recorder is None or self._step is None or trainer.global_step == self._step:
            return
        self.recorder.record_updates()
        self._finish(trainer, self._step)
        self._step = None

    def flush(self, trainer: L.Trainer) -> dict[str, Any] | None:
        """Summarise the step being monitored now, before its optimizer step (the update is
        then not recorded); for callbacks that stop training at a bad step. Every rank must
        call it (it all-reduces). Returns the record, or None when no step is being monitored.

        Args:
            trainer: the running trainer.
        """
        if self.recorder is None or self._step is None:
            return None
        step, self._step = self._step, None
        self._finish(trainer, step)
        return self.last

    def _finish(self, trainer: L.Trainer, step: int) -> None:
        recorder = self.recorder
        order, keys = recorder.event_order(), recorder.keys()
        stats = recorder.collect()
        recorder.reset_events()
        recorder.drop_snapshot()  # finished before the step (see flush): no update this time
        recorder.active = False
        stats = _all_reduce_sum(stats)
        summary = summarise(stats, self.formats)
        zeros, hist = histogram(stats, self.formats)
        names = summary_fields(self.formats)
        rows = torch.cat([summary, stats[:, 1:2], zeros[:, None], hist], dim=1).tolist()  # the sync
        layers: dict[str, dict[str, dict[str, Any]]] = {}
        bad: set[Key] = set()
        for key, row in zip(keys, rows, strict=True):
            count, counts = row[len(names)], row[len(names) + 1 :]
            if count == 0:  # nothing seen (e.g. a layer without parameters)
                continue
            values: dict[str, Any] = dict(zip(names, row[: len(names)], strict=True))
            if values.pop("nonfinite") > 0 or not math.isfinite(values["rms"]):
                bad.add(key)
            values[HIST_STAT] = {
                "min_exp": HIST_MIN_EXP,
                "counts": [round(c) for c in counts[1:]],
                "zeros": round(counts[0]),
            }
            layers.setdefault(key[0], {})[key[1]] = values
        first = next((k for k in order if k in bad), None) or next(iter(sorted(bad)), None)
        record = {
            "step": step,
            "formats": [f.name for f in self.formats],
            "layers": layers,
            "first_non_finite": list(first) if first else None,
        }
        self.last = record
        if first is not None and self.first_non_finite is None:
            self.first_non_finite = {"step": step, "layer": first[0], "tensor": first[1]}
        if trainer.is_global_zero:
            self._publish(trainer, record)

    def _publish(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        step, layers = record["step"], record["layers"]
        if record["first_non_finite"]:
            layer, tensor = record["first_non_finite"]
            log.warning("scales: step %d: %s/%s went non-finite first", step, layer, tensor)
        metrics = {
            f"scales/{layer}/{tensor}/{stat}": value
            for layer, tensors in layers.items()
            for tensor, values in tensors.items()
            for stat, value in values.items()
            if stat != HIST_STAT
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.wandb_table:
            log_profile(trainer.loggers, step, layers, self.formats)
        if self.wandb_histograms:
            log_histograms(trainer.loggers, step, layers)
        if self.jsonl and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / JSONL_NAME, "a") as f:
                f.write(json.dumps(record) + "\n")


def _all_reduce_sum(stats: Tensor) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats
