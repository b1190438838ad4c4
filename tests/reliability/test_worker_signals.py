"""DataLoader workers ignore SIGTERM and SIGINT under fork and forkserver (Python 3.14's default
on Linux, where no handler is inherited, as under spawn), and the loader's own
``worker_init_fn`` still runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from lit_unitscale.callbacks.signals import IgnoreStopSignals, protect_workers


class _Touch:
    """A loader's own worker_init_fn: leaves a file per worker."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, worker_id: int) -> None:
        (self.folder / f"worker{worker_id}").touch()


@pytest.mark.parametrize("method", ["fork", pytest.param("forkserver", marks=pytest.mark.slow)])
def test_workers_keep_serving_batches_after_stop_signals(method: str, tmp_path: Path) -> None:
    loader = DataLoader(
        list(range(64)),
        batch_size=4,
        num_workers=2,
        multiprocessing_context=method,
        worker_init_fn=_Touch(tmp_path),
    )
    assert protect_workers(loader) is loader
    assert isinstance(loader.worker_init_fn, IgnoreStopSignals)
    protect_workers(loader)
    assert not isinstance(loader.worker_init_fn.inner, IgnoreStopSignals)  # wrapped once
    iterator = iter(loader)
    first = [next(iterator).tolist(), next(iterator).tolist()]  # one batch from each worker
    for worker in iterator._workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.5)
    rest = [batch.tolist() for batch in iterator]
    assert first + rest == [list(range(i, i + 4)) for i in range(0, 64, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker0", "worker1"]
