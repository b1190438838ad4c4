"""Training callbacks shipped as ``lit_unitscale.callbacks``."""

from lit_unitscale.callbacks.progress import RunSummary, StepProgressBar
from lit_unitscale.callbacks.scale_monitor import ScaleMonitor
from lit_unitscale.callbacks.throughput import Throughput

__all__ = ["RunSummary", "ScaleMonitor", "StepProgressBar", "Throughput"]
