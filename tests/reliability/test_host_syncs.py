"""The stop and non-finite checks never make a training micro-batch wait on the host outside
logging steps: counted as ``aten::_local_scalar_dense`` calls (every ``.item()``, ``int()``,
``bool()`` of a tensor) made inside their hooks, in a real fit of the tiny recipe."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_unitscale.callbacks.logging_steps import is_logging_step
from lit_unitscale.callbacks.nonfinite import NonFiniteGuard
from lit_unitscale.callbacks.signals import GracefulStop
from tests.strategies._worker import TINY

HOOKS = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step")
HOOKS += ("on_train_batch_end",)


class _CountSyncs(TorchDispatchMode):
    def __init__(self, counts: collections.Counter, key: Any) -> None:
        super().__init__()
        self.counts, self.key = counts, key

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts[self.key] += 1
        return func(*args, **(kwargs or {}))


def _counted(callback: Any, trainer_box: list, counts: collections.Counter) -> None:
    for name in HOOKS:
        hook = getattr(callback, name)

        def counted(trainer, *args, _hook=hook, **kwargs):
            trainer_box[:] = [trainer]
            key = (trainer.global_step, is_logging_step(trainer))
            with _CountSyncs(counts, key):
                return _hook(trainer, *args, **kwargs)

        setattr(callback, name, counted)


def test_no_host_sync_in_the_stop_and_non_finite_checks_outside_logging_steps(
    tmp_path: Path,
) -> None:
    from lit_unitscale.cli import make_cli

    args = ["--config", str(TINY), f"--trainer.default_root_dir={tmp_path}"]
    args += ["--trainer.max_steps=8", "--trainer.log_every_n_steps=4"]
    args += ["--trainer.accumulate_grad_batches=2", "--data.init_args.batch_size=4"]
    cli = make_cli(args, run=False)
    counts: collections.Counter = collections.Counter()
    box: list = []
    guard, stop = NonFiniteGuard(), GracefulStop()
    _counted(guard, box, counts)
    _counted(stop, box, counts)
    cli.trainer.callbacks += [guard, stop]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 8
    logging = sorted(step for step, is_logging in counts if is_logging)
    quiet = {key: n for key, n in counts.items() if not key[1]}
    # Steps 3 and 7 end a logging interval of 4: the guard reads its device flag there once.
    assert logging == [3, 7] and all(counts[(s, True)] == 1 for s in logging), counts
    assert sum(quiet.values()) == 0, quiet
