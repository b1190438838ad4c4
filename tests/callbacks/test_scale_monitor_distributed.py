"""ScaleMonitor under 2-process DDP, FSDP2 and DeepSpeed ZeRO-2/3 (CPU, gloo) reports the values
one process reports on the same global batch: activations are reduced over the batch slices,
sharded weights, gradients and updates over their shards (ZeRO-3's padding left out). DeepSpeed
runs accumulate 2 micro-batches per step, where it calls the optimizer hooks after every one.
The log2 histograms (the tiny model's tensors are never sampled) hold the same elements,
replicated weights counted once, in the same bins at step 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .dist_fit import main as fit

SCRIPT = Path(__file__).with_name("dist_fit.py")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "scales.jsonl").read_text().splitlines()]


def _assert_same(single: list[dict], other: list[dict]) -> None:
    assert [r["step"] for r in other] == [r["step"] for r in single] == [0, 1]
    for a, b in zip(single, other, strict=True):
        assert a["layers"].keys() == b["layers"].keys()
        for layer, tensors in a["layers"].items():
            assert tensors.keys() == b["layers"][layer].keys()
            for tensor, values in tensors.items():
                got = b["layers"][layer][tensor]
                where = f"step {a['step']} {layer}/{tensor}"
                assert got["rms"] == pytest.approx(values["rms"], rel=1e-5), where
                for stat, value in values.items():
                    if stat == "log2_hist":
                        _assert_same_hist(value, got[stat], exact=a["step"] == 0, where=where)
                        continue
                    # Shares of elements beyond a format's range: after an update an element
                    # that close to the boundary may cross it, at most one in 1,000 (as bins).
                    share = 1e-6 if a["step"] == 0 or stat == "rms" else 1e-3
                    assert got[stat] == pytest.approx(value, rel=1e-5, abs=share), (where, stat)


def _assert_same_hist(want: dict, got: dict, exact: bool, where: str) -> None:
    """Same number of elements always; the same counts at step 0, where every value is
    computed alike. After an update the values differ in their last bits (the reductions add
    in another order, the 1e-5 above), and an element that close to a power of two may move to
    the next bin: at most one in 1,000 may."""
    assert got["min_exp"] == want["min_exp"] and got["zeros"] == want["zeros"], where
    n = sum(want["counts"]) + want["zeros"]
    assert n > 0 and sum(got["counts"]) + got["zeros"] == n, where
    moved = sum(abs(g - w) for g, w in zip(got["counts"], want["counts"], strict=True)) // 2
    assert moved == 0 if exact else moved <= n // 1000, (where, moved, n)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, list[dict]]:
    """One process's records, keyed by the number of accumulated micro-batches."""
    runs = {}
    for accumulate in (1, 2):
        out = tmp_path_factory.mktemp(f"single{accumulate}")
        fit("single", str(out), accumulate)
        runs[accumulate] = _records(out)
    return runs


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("mode", "accumulate"), [("ddp", 1), ("fsdp2", 1), ("deepspeed2", 2), ("deepspeed3", 2)]
)
def test_two_processes_match_one(mode, accumulate, single, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(tmp_path), str(accumulate)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(single[accumulate], _records(tmp_path))
