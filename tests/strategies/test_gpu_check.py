"""benchmarks/gpu_check.py runs here: its help, and the parts that need no GPU print one JSON
line with the values a CPU can check (FP8 matmul exact against the upcast product; FSDP2
computes in bf16 under bf16-mixed and in fp32 under 32-true). On a CPU-only machine it refuses
the GPU parts with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_part() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    parts = ("throughput", "umup_vs_sp", "fsdp2", "fsdp2_dtypes", "fp8", "fp8_training", "syncs")
    for part in (*parts, "scale_monitor_offload"):
        assert part in proc.stdout


@pytest.mark.slow
def test_cpu_safe_parts_print_one_json_line() -> None:
    proc = _run(
        "--device", "cpu", "--parts", "fp8,fsdp2_dtypes,umup_vs_sp,fp8_training,fsdp2", "--quick"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["fp8"]["fp8_max_abs_error_vs_upcast"] == 0.0
    assert result["fsdp2_dtypes"]["32-true"]["in_forward"] == ["float32"]
    assert result["fsdp2_dtypes"]["bf16-mixed"]["in_forward"] == ["bfloat16"]
    assert result["umup_vs_sp"]["umup_vs_sp_eager"] > 0, result["umup_vs_sp"]
    tiny = result["fp8_training"]["tiny"]
    for name in ("umup_bf16_eager", "umup_fp8_eager", "sp_bf16_eager", "sp_fp8_eager"):
        assert tiny[name]["tokens_per_s"] > 0 and 0 < tiny[name]["last_loss"] < 10, (name, tiny)
    assert tiny["umup_fp8_vs_bf16_eager"] > 0
    for name in ("bf16-mixed", "bf16-mixed+fp8"):
        assert 0 < result["fsdp2"][name]["loss"] < 20, result["fsdp2"]


def test_gpu_parts_refused_in_one_line_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _run("--parts", "throughput")
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr.strip().splitlines()[-1]
