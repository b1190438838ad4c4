"""ScaleWatchdog: warns when a layer's scale leaves the range low-precision training needs.

It reads the :class:`~lit_unitscale.callbacks.scale_monitor.ScaleMonitor`'s record of each
monitor step (already reduced across ranks, so every rank decides alike and nothing more is
communicated) and alerts once per layer and tensor, the first time its RMS leaves
``[min_rms, max_rms]`` or its share of elements that would underflow or overflow ``format``
passes a threshold: one console line, an ``alerts`` record in scales.jsonl and, in an online
W&B run, a ``wandb.alert``. With ``stop`` it also ends training at that step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L

from lit_unitscale.callbacks.scale_monitor import JSONL_NAME, ScaleMonitor
from lit_unitscale.callbacks.scale_recorder import TENSORS
from lit_unitscale.callbacks.scale_stats import RANGE_FORMATS
from lit_unitscale.errors import RecipeError

log = logging.getLogger(__name__)


class ScaleWatchdog(L.Callback):
    """Alert once per layer and tensor when its scale drifts out of range.

    Thresholds are in unit terms: under u-μP activations, activation gradients and weight
    gradients start with RMS near 1, so a band of several powers of two around 1 holds a
    healthy run (the head's logits sit at ``d_model**-0.5`` by design).

    Args:
        min_rms: alert when a tensor's RMS falls below this.
        max_rms: alert when a tensor's RMS rises above this.
        format: the low-precision format whose range is checked (``e4m3``, ``e5m2``, ``fp16``);
            the ScaleMonitor must report it.
        max_underflow: alert when more than this share of a tensor's elements is non-zero but
            below the format's smallest normal (u-μP's logits, at ``d_model**-0.5``, have about
            a fifth of their elements below E4M3's at width 256: a lower share would fire on
            every healthy run).
        max_overflow: alert when more than this share is above the format's max.
        tensors: tensor kinds watched (updates scale with the learning rate, so they are not
            watched by default).
        stop: also stop training at the step that raised the first alert.
    """

    def __init__(
        self,
        min_rms: float = 2.0**-8,
        max_rms: float = 2.0**8,
        format: str = "e4m3",
        max_underflow: float = 0.5,
        max_overflow: float = 1e-3,
        tensors: Sequence[str] = ("act", "act_grad", "weight", "weight_grad"),
        stop: bool = False,
    ) -> None:
        if not 0 < min_rms < max_rms:
            raise RecipeError(f"need 0 < min_rms < max_rms, got {min_rms} and {max_rms}")
        if format not in RANGE_FORMATS:
            raise RecipeError(f"unknown format {format!r}; choose from {sorted(RANGE_FORMATS)}")
        for name, share in (("max_underflow", max_underflow), ("max_overflow", max_overflow)):
            if not 0 <= share <= 1:
                raise RecipeError(f"{name} must be a share in [0, 1], got {share}")
        unknown = sorted(set(tensors) - set(TENSORS))
        if unknown:
            raise RecipeError(f"unknown tensors {unknown}; choose from {list(TENSORS)}")
        self.min_rms, self.max_rms = min_rms, max_rms
        self.format = format
        self.max_underflow, self.max_overflow = max_underflow, max_overflow
        self.tensors = tuple(tensors)
        self.stop = stop
        self.alerted: dict[tuple[str, str], dict[str, Any]] = {}  # (layer, tensor) -> alert
        self._monitor: ScaleMonitor | None = None
        self._seen_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, ScaleMonitor)]
        if not monitors:
            raise RecipeError("ScaleWatchdog needs a ScaleMonitor in trainer.callbacks")
        self._monitor = monitors[0]
        if self.format not in [f.name for f in self._monitor.formats]:
            raise RecipeError(
                f"ScaleWatchdog checks {self.format}, which the ScaleMonitor does not report "
                f"(its formats: {[f.name for f in self._monitor.formats]})"
            )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        record = self._monitor.last if self._monitor is not None else None
        if record is None or record["step"] == self._seen_step:
            return
        self._seen_step = record["step"]
        alerts = self.check(record)
        if not alerts:
            return
        if trainer.is_global_zero:
            self._publish(trainer, record["step"], alerts)
        if self.stop:
            trainer.should_stop = True

    def check(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """New alerts for one monitor record (as in scales.jsonl); each (layer, tensor) alerts
        at most once over the run.

        Args:
            record: a ScaleMonitor record with ``step`` and ``layers``.
        """
        new = []
        for layer, tensors in record["layers"].items():
            for tensor, values in tensors.items():
                if tensor not in self.tensors or (layer, tensor) in self.alerted:
                    continue
                reasons = self._reasons(values)
                if reasons:
                    alert = {"layer": layer, "tensor": tensor, "reasons": reasons}
                    self.alerted[(layer, tensor)] = {"step": record["step"], **alert}
                    new.append(alert)
        return new

    def _reasons(self, values: dict[str, Any]) -> list[str]:
        out = []
        rms = values["rms"]
        if not math.isfinite(rms):
            out.append(f"RMS {rms}")
        elif rms < self.min_rms:
            out.append(f"RMS {rms:.3g} < {self.min_rms:.3g}")
        elif rms > self.max_rms:
            out.append(f"RMS {rms:.3g} > {self.max_rms:.3g}")
        under = values.get(f"underflow_{self.format}", 0.0)
        over = values.get(f"overflow_{self.format}", 0.0)
        if under > self.max_underflow:
            out.append(f"{under:.1%} underflow {self.format} > {self.max_underflow:.1%}")
        if over > self.max_overflow:
            out.append(f"{over:.2%} overflow {self.format} > {self.max_overflow:.2%}")
        return out

    def _publish(self, trainer: L.Trainer, step: int, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            log.warning(
                "scale watchdog: step %d: %s/%s %s",
                step,
                alert["layer"],
                alert["tensor"],
                "; ".join(alert["reasons"]),
            )
        monitor = self._monitor
        if monitor.jsonl and monitor.run_dir is not None:
            monitor.run_dir.mkdir(parents=True, exist_ok=True)
            with open(monitor.run_dir / JSONL_NAME, "a") as f:
                f.write(json.dumps({"step": step, "alerts": alerts}) + "\n")
        _wandb_alert(trainer.loggers, step, alerts)


def _wandb_alert(loggers: Sequence[Any], step: int, alerts: list[dict[str, Any]]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        if getattr(run, "offline", True):
            continue  # alerts need the server; the jsonl and the console have them offline
        import wandb

        text = "\n".join(f"{a['layer']}/{a['tensor']}: {'; '.join(a['reasons'])}" for a in alerts)
        run.alert(
            title=f"scales out of range at step {step}", text=text, level=wandb.AlertLevel.WARN
        )
