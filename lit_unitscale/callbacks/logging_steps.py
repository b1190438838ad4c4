"""Whether Lightning writes logs after the current training micro-batch: the only micro-batches
that may read values back from the device (the loggers read them there anyway)."""

from __future__ import annotations

import lightning as L


def is_logging_step(trainer: L.Trainer) -> bool:
    """Lightning's own test of ``log_every_n_steps`` for the optimizer step in progress.

    Args:
        trainer: the running trainer.
    """
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None:
        return bool(connector.should_update_logs)
    every = max(1, trainer.log_every_n_steps)
    return (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % every == 0
