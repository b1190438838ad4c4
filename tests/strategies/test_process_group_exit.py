"""A run under our strategies leaves no process group for interpreter finalisation: with gloo,
one left there can abort a finished run (SIGABRT, exit -6) when its worker threads release
tensors after the GIL is gone. Lightning tears the group down at exit only for NCCL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import torch.distributed as dist
    # Registered first, so it runs last: after every exit handler the run registered.
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
    sys.path.insert(0, sys.argv[1])
    import lightning as L
    from lit_unitscale.strategies import DDPStrategy
    from tests.callbacks.tiny import sliced_loader, tiny_task

    trainer = L.Trainer(
        accelerator="cpu", devices=1, strategy=DDPStrategy(), max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=sys.argv[2], use_distributed_sampler=False,
    )
    trainer.fit(tiny_task(), sliced_loader(batch_size=4))
    print("initialized after fit:", dist.is_initialized(), flush=True)
    """
)


def test_process_group_is_destroyed_before_interpreter_exit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The group stays up after fit (a test or predict may follow) and is gone by exit.
    assert "initialized after fit: True" in done.stdout, done.stdout
    assert "initialized at exit: False" in done.stdout, done.stdout
