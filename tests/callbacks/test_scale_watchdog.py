"""The scale watchdog: a layer whose scale drifts out of the band raises exactly one warning,
one ``alerts`` record in scales.jsonl, and stops training when asked to."""

from __future__ import annotations

import json
import logging

import pytest

from lit_unitscale.callbacks import ScaleMonitor
from lit_unitscale.callbacks.scale_watchdog import ScaleWatchdog

from .tiny import tiny_loader, tiny_task


def drift(task, trainer) -> None:
    """Multiply block1's output by 4 more at every optimizer step: its RMS leaves the band at
    a known step and stays out; no other layer's activation changes scale (the final norm
    normalises it away). Registered before the monitor's hook, which then sees the drift."""
    block = task.model.blocks()[1]
    block.register_forward_hook(lambda m, a, out: out * 4.0**trainer.global_step)


def _fit(trainer_factory, watchdog: ScaleWatchdog, max_steps: int = 6):
    task = tiny_task()
    task.configure_model()
    trainer = trainer_factory([ScaleMonitor(every_n_steps=1), watchdog], max_steps=max_steps)
    drift(task, trainer)
    trainer.fit(task, tiny_loader())
    return trainer


def test_a_drifting_layer_warns_once(trainer_factory, tmp_path, caplog):
    watchdog = ScaleWatchdog(min_rms=2.0**-6, max_rms=2.0**6, tensors=("act",))
    with caplog.at_level(logging.WARNING, logger="lit_unitscale.callbacks.scale_watchdog"):
        trainer = _fit(trainer_factory, watchdog)
    warnings = [r.getMessage() for r in caplog.records if "scale watchdog" in r.getMessage()]
    assert len(warnings) == 1, warnings
    # Unit-scaled RMS ~1 times 4**step passes 2**6 at step 3 and stays out through step 5.
    assert warnings[0].startswith("scale watchdog: step 3: block1/act RMS ")
    assert "\n" not in warnings[0]
    assert trainer.global_step == 6  # warned, not stopped
    records = [json.loads(s) for s in (tmp_path / "scales.jsonl").read_text().splitlines()]
    alerts = [r for r in records if "alerts" in r]
    assert len(alerts) == 1 and alerts[0]["step"] == 3
    assert [(a["layer"], a["tensor"]) for a in alerts[0]["alerts"]] == [("block1", "act")]
    assert alerts[0]["alerts"][0]["reasons"][0].startswith("RMS ")
    assert [r["step"] for r in records if "layers" in r] == [0, 1, 2, 3, 4, 5]


def test_stop_ends_training_at_the_alerting_step(trainer_factory):
    watchdog = ScaleWatchdog(min_rms=2.0**-6, max_rms=2.0**6, tensors=("act",), stop=True)
    trainer = _fit(trainer_factory, watchdog)
    assert list(watchdog.alerted) == [("block1", "act")]
    assert trainer.global_step == 4  # step 3 ran its update, then training stopped


def test_range_shares_alert(trainer_factory):
    # A share threshold of 0 alerts on any underflow at all: the drifting layer's elements
    # leave E4M3's range long before its RMS leaves a wide band.
    watchdog = ScaleWatchdog(min_rms=2.0**-30, max_rms=2.0**30, max_overflow=0.0,
                             max_underflow=1.0, tensors=("act",))  # fmt: skip
    _fit(trainer_factory, watchdog)
    assert list(watchdog.alerted) == [("block1", "act")]
    assert "overflow e4m3" in watchdog.alerted[("block1", "act")]["reasons"][0]


def test_rejects_bad_arguments(trainer_factory):
    with pytest.raises(ValueError, match="min_rms < max_rms"):
        ScaleWatchdog(min_rms=2.0, max_rms=1.0)
    with pytest.raises(ValueError, match="unknown format"):
        ScaleWatchdog(format="e3m4")
    with pytest.raises(ValueError, match="max_underflow"):
        ScaleWatchdog(max_underflow=2.0)
    with pytest.raises(ValueError, match="needs a ScaleMonitor"):
        trainer_factory([ScaleWatchdog()]).fit(tiny_task(), tiny_loader())
