"""The training step never waits on the host: outside logging steps, a training micro-batch of
every task reads no tensor value back (no ``.item()``, ``int()``, ``bool()``, ``.tolist()``).

Each of those reaches the dispatcher as ``aten::_local_scalar_dense`` — on a GPU, a wait for
everything queued before it — so a dispatch mode counts them over one whole micro-batch as
Lightning runs it (data fetch, training step, backward, optimizer step, every hook and callback
the run has, logging). The run accumulates 2 micro-batches per step and logs every 3 steps to
a CSV logger; the logging micro-batches must show syncs (metrics become floats there), which
shows the count sees them.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.tasks.conftest import CONFIGS

LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default
STEPS, ACCUMULATE, LOG_EVERY = 4, 2, 3


class CountSyncs(TorchDispatchMode):
    """Counts host reads of tensor values, keeping where the first one came from.

    Args:
        host_side: storage of tensors that live on the host on every machine, whose reads
            wait for nothing: torch optimizers' step counts (CPU tensors unless
            ``capturable``).
    """

    def __init__(self, host_side: set[int]) -> None:
        super().__init__()
        self.host_side = host_side
        self.count = 0
        self.first: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is LOCAL_SCALAR and args[0].data_ptr() not in self.host_side:
            stack = traceback.extract_stack()
            # The DataLoader builds batches from host tensors (in workers, on a real run)
            # before anything reaches the device: its reads wait for nothing.
            if not any("/torch/utils/data/" in frame.filename for frame in stack):
                self.count += 1
                if self.first is None:
                    frames = [f for f in stack if "/torch/" not in f.filename]
                    self.first = "".join(traceback.format_list(frames[-5:]))
        return func(*args, **(kwargs or {}))


class OptimizerSteps(set):
    """The storage of every optimizer's per-parameter step count, looked up when asked (the
    optimizer creates them in its first step)."""

    def __init__(self, trainer) -> None:
        super().__init__()
        self.trainer = trainer

    def __contains__(self, pointer: object) -> bool:
        return any(
            isinstance(step := state.get("step"), torch.Tensor) and step.data_ptr() == pointer
            for optimizer in self.trainer.optimizers
            for state in optimizer.state.values()
        )


def micro_batch_syncs(kind: str, root: Path, *overrides: str) -> list[tuple[bool, CountSyncs]]:
    """Train ``kind`` for a few steps; per micro-batch, whether Lightning logs in it and the
    syncs it made."""
    from lit_unitscale.cli import make_cli

    args = [
        "--config",
        str(CONFIGS / "trainer.yaml"),
        "--config",
        str(CONFIGS / f"{kind}.yaml"),
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={STEPS}",
        f"--trainer.accumulate_grad_batches={ACCUMULATE}",
        f"--trainer.log_every_n_steps={LOG_EVERY}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        *overrides,
    ]
    cli = make_cli(args, run=False)
    trainer = cli.trainer
    loop = trainer.fit_loop.epoch_loop
    advance = loop.advance
    seen: list[tuple[bool, CountSyncs]] = []

    def counted_advance(data_fetcher) -> None:
        logging = trainer._logger_connector.should_update_logs
        with CountSyncs(OptimizerSteps(trainer)) as mode:
            advance(data_fetcher)
        seen.append((logging, mode))

    loop.advance = counted_advance
    trainer.fit(cli.model, datamodule=cli.datamodule)
    assert trainer.global_step == trainer.max_steps
    return seen


def check(seen: list[tuple[bool, CountSyncs]]) -> None:
    assert len(seen) == STEPS * ACCUMULATE
    quiet = [(i, mode) for i, (logging, mode) in enumerate(seen) if not logging]
    assert quiet, "every micro-batch was a logging one: the test checks nothing"
    for i, mode in quiet:
        assert mode.count == 0, f"micro-batch {i}: {mode.count} host syncs, first at\n{mode.first}"
    # The count is live: where Lightning logs, metrics are read back.
    assert sum(mode.count for logging, mode in seen if logging) > 0


@pytest.mark.parametrize("kind", ["causal", "mlm", "sentiment", "ner", "g2p"])
def test_no_host_sync_in_a_training_micro_batch(kind: str, tmp_path: Path) -> None:
    check(micro_batch_syncs(kind, tmp_path))


def test_no_host_sync_when_fine_tuning(tmp_path: Path) -> None:
    micro_batch_syncs("mlm", tmp_path / "mlm", "--trainer.max_steps=2")
    (checkpoint,) = (tmp_path / "mlm").rglob("*.ckpt")
    check(
        micro_batch_syncs(
            "sentiment",
            tmp_path / "finetune",
            f"--model.init_args.pretrained={checkpoint}",
            f"--data.init_args.tokenizer_path={tmp_path / 'mlm' / 'tokenizer.json'}",
        )
    )


def test_no_host_sync_with_the_shipped_console(tmp_path: Path) -> None:
    # What the recipes show while training: the step bar (loss, tok/s) and the throughput meter.
    check(
        micro_batch_syncs(
            "causal",
            tmp_path,
            "--trainer.enable_progress_bar=true",
            "--trainer.callbacks+=lit_unitscale.callbacks.StepProgressBar",
            "--trainer.callbacks+=lit_unitscale.callbacks.throughput.Throughput",
            "--trainer.callbacks.log_every_n_steps=1",
        )
    )
