"""Stop (or skip the update) when the loss or a gradient is inf/NaN.

The finiteness of every micro-batch's loss and of every gradient is computed on the device and
kept there (the first non-finite step, as a device scalar); no micro-batch waits on the host.
With ``action="stop"`` it is read (one host sync, and one all-reduce across ranks) only at
logging steps (``trainer.log_every_n_steps``), before every checkpoint is written and at the
end of training: a non-finite step found at a logging step never reaches the weights, one found
later stops the run before any checkpoint holds it, so the last checkpoint on disk is always
the last good one. With ``action="skip"`` the update must be dropped before it is applied, so
the decision is read at every optimizer step (still never per micro-batch).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_unitscale.callbacks.logging_steps import is_logging_step
from lit_unitscale.callbacks.scale_stats import local_tensor
from lit_unitscale.errors import RecipeError, TrainingFault

log = logging.getLogger(__name__)


class NonFiniteError(TrainingFault):
    """Training stopped on a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Refuse optimizer steps whose loss or gradients are not finite.

    Args:
        action: ``stop``: raise with a message naming the step (and, when a ScaleMonitor is
            attached, the first layer/tensor that went non-finite); ``skip``: drop this step's
            update, count it, and stop once more than ``max_skips`` steps were skipped.
        max_skips: skipped steps tolerated with ``action="skip"``.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise RecipeError(f"NonFiniteGuard: action must be 'stop' or 'skip', got {action!r}")
        if max_skips < 0:
            raise RecipeError(f"NonFiniteGuard: max_skips must be >= 0, got {max_skips}")
        self.action = action
        self.max_skips = max_skips
        self.skipped = 0
        self.skipped_steps: list[int] = []
        self._loss_ok: Tensor | None = None
        self._loss: Tensor | None = None
        self._first_bad: Tensor | None = None  # device scalar: first non-finite step, or -1

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_steps = list(state_dict.get("skipped_steps", []))

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        ok = torch.isfinite(loss.detach()).all()
        # Accumulated micro-batches: every one must be finite.
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step_ok = self._step_ok(optimizer)
        loss, self._loss = self._loss, None
        if step_ok is None:
            return
        if self.action == "skip":
            self._skip_or_stop(trainer, pl_module, optimizer, step_ok, loss)
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=step_ok.device)
        step_ok = step_ok.to(self._first_bad.device, non_blocking=True)
        self._first_bad.masked_fill_((self._first_bad < 0) & ~step_ok, trainer.global_step)
        if is_logging_step(trainer):
            self._raise_if_bad(trainer, pl_module, optimizer, loss)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Runs on every rank before the checkpoint is written: a bad step never reaches disk.
        self._raise_if_bad(trainer, pl_module, None, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer, pl_module, None, None)

    def _step_ok(self, optimizer: torch.optim.Optimizer) -> Tensor | None:
        """This step's loss and gradients all finite, as a device flag (None: nothing to check)."""
        # FSDP2 gradients are DTensors: check this rank's shard (ranks agree by reduction).
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [local_tensor(g) for g in grads if g is not None]
        flags = [torch.isfinite(g).all() for g in grads if g.numel()]
        if self._loss_ok is not None:
            flags.append(self._loss_ok.to(flags[0].device) if flags else self._loss_ok)
        self._loss_ok = None
        return torch.stack(flags).all() if flags else None

    def _first_bad_step(self, trainer: L.Trainer) -> int | None:
        """The first non-finite step on any rank (one host sync; None: all finite)."""
        if self._first_bad is None:
            return None
        never = torch.iinfo(torch.int64).max
        first = torch.where(self._first_bad < 0, never, self._first_bad)
        if trainer.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first)  # the one host sync
        return None if value == never else value

    def _raise_if_bad(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        optimizer: torch.optim.Optimizer | None,
        loss: Tensor | None,
    ) -> None:
        first = self._first_bad_step(trainer)
        if first is None:
            return
        self._first_bad = None
        step = trainer.global_step
        if first == step and optimizer is not None:  # found before its update
            what = self._describe(pl_module, optimizer, loss)
            located = _first_non_finite(trainer, step)
            raise NonFiniteError(
                f"training stopped at step {step}: {what}{located}. The step's update was "
                "not applied and no checkpoint was written after it; resume from the last "
                "checkpoint with a lower lr, or use NonFiniteGuard(action='skip')."
            )
        located = _first_non_finite(trainer, first)
        raise NonFiniteError(
            f"training stopped at step {step}: the loss or a gradient is non-finite since step "
            f"{first}{located} (checked every {trainer.log_every_n_steps} steps and before each "
            f"checkpoint). No checkpoint was written after step {first}; resume from the last "
            "checkpoint with a lower lr, or use NonFiniteGuard(action='skip')."
        )

    def _skip_or_stop(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        optimizer: torch.optim.Optimizer,
        step_ok: Tensor,
        loss: Tensor | None,
    ) -> None:
        ok = bool(step_ok)  # the update is applied next: decide now (one host sync per step)
        if trainer.world_size > 1:
            ok = not trainer.strategy.reduce_boolean_decision(not ok, all=False)
        if ok:
            return
        step = trainer.global_step
        what = self._describe(pl_module, optimizer, loss)
        if self.skipped < self.max_skips:
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without gradients
            self.skipped += 1
            self.skipped_steps.append(step)
            pl_module.log("train/nonfinite_skips", float(self.skipped), batch_size=1)
            log.warning("step %d: %s; update skipped (%d so far)", step, what, self.skipped)
            return
        located = _first_non_finite(trainer, step)
        raise NonFiniteError(
            f"training stopped at step {step}: {what}{located}; {self.skipped} earlier steps "
            "skipped. The step's update was not applied and no checkpoint was written after "
            "it; resume from the last checkpoint with a lower lr."
        )

    @staticmethod
    def _describe(pl_module: L.LightningModule, optimizer: Any, loss: Tensor | None) -> str:
        parts = []
        if loss is not None and not torch.isfinite(loss).all():
            parts.append(f"loss is {loss.float().mean().item()}")
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = [
            names.get(id(p), "?")
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and not torch.isfinite(local_tensor(p.grad)).all()
        ]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            parts.append(f"non-finite gradients in {', '.join(bad[:3])}{more}")
        return " and ".join(parts) or "non-finite values"


def _first_non_finite(trainer: L.Trainer, step: int) -> str:
    """``; first non-finite: <layer>/<tensor>`` from an attached ScaleMonitor, if it saw one."""
    from lit_unitscale.callbacks.scale_monitor import ScaleMonitor

    monitor = next((c for c in trainer.callbacks if isinstance(c, ScaleMonitor)), None)
    if monitor is None:
        return " (add ScaleMonitor to locate the first non-finite layer)"
    monitor.flush(trainer)  # when it is recording this very step: summarise it before the update
    first = monitor.first_non_finite
    if first is None:
        return (
            f" (ScaleMonitor saw no non-finite tensor; it records every "
            f"{monitor.every_n_steps} steps)"
        )
    where = f"{first['layer']}/{first['tensor']}"
    return f"; first non-finite: {where} (ScaleMonitor, step {first['step']})"
