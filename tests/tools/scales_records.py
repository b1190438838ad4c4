"""Realistic scales.jsonl records for the dashboard tests: statistics and log2 histograms of
Gaussian tensors whose RMS drifts over steps, in the format the ScaleMonitor writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

LAYERS = ["embed", "block0", "block1", "final_norm", "head"]
TENSORS = ("act", "act_grad", "weight", "weight_grad", "update")
MIN_EXP, MAX_EXP = -40, 20  # the monitor's fixed histogram range, clamped at both ends


def log2_hist(x: np.ndarray) -> dict:
    """The histogram of floor(log2 |x|) of ``x``'s non-zero elements, zeros counted apart.

    Args:
        x: values of one tensor.
    """
    nonzero = x[x != 0]
    exps = np.clip(np.floor(np.log2(np.abs(nonzero))).astype(int), MIN_EXP, MAX_EXP)
    counts = np.bincount(exps - MIN_EXP, minlength=MAX_EXP - MIN_EXP + 1)
    return {"min_exp": MIN_EXP, "counts": counts.tolist(), "zeros": int(x.size - nonzero.size)}


def target_rms(layer_index: int, tensor: str, step: int) -> float:
    """The RMS of one tensor of the synthetic run at ``step``: near 1, spread by layer and kind,
    the gradients of the deeper layers shrinking over steps.

    Args:
        layer_index: position of the layer in :data:`LAYERS`.
        tensor: tensor kind.
        step: the monitor step.
    """
    base = {"act": 0.0, "weight": -1.0, "act_grad": -3.0, "weight_grad": -2.0, "update": -9.0}
    drift = -0.2 * step * layer_index if tensor.endswith("grad") else 0.0
    return 2.0 ** (base[tensor] + 0.5 * layer_index + drift)


def record(step: int, histograms: bool = True, size: int = 4096) -> dict:
    """One monitor-step record.

    Args:
        step: the optimizer step.
        histograms: whether tensors carry ``log2_hist`` (records of older runs do not).
        size: elements per synthetic tensor.
    """
    rng = np.random.default_rng(step)
    layers: dict = {}
    for i, layer in enumerate(LAYERS):
        for tensor in TENSORS:
            x = rng.standard_normal(size) * target_rms(i, tensor, step)
            x[: size // 64] = 0.0  # a few exact zeros, as after a ReLU or masking
            values = {
                "rms": float(math.sqrt(np.mean(x**2))),
                "underflow_e4m3": float(np.mean((x != 0) & (np.abs(x) < 2.0**-6))),
                "overflow_e4m3": float(np.mean(np.abs(x) > 448.0)),
            }
            if histograms:
                values["log2_hist"] = log2_hist(x)
            layers.setdefault(layer, {})[tensor] = values
    return {"step": step, "formats": ["e4m3"], "layers": layers, "first_non_finite": None}


def write_run(run_dir: Path, steps: list[int], histograms: bool = True) -> Path:
    """A run directory with a scales.jsonl of ``steps``; returns its path.

    Args:
        run_dir: directory to write into.
        steps: monitor steps.
        histograms: whether the records carry histograms.
    """
    lines = [json.dumps(record(s, histograms)) for s in steps]
    (run_dir / "scales.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir
