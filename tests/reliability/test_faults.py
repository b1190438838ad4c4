"""Faults during training, through the real CLI: non-finite steps, kill -9 and resume,
SIGTERM, a crash while a checkpoint is being written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_unitscale.checkpoints import AtomicCheckpointIO, atomic_torch_save, safe_load
from tests.conftest import ROOT
from tests.reliability.runs import losses, popen, recipe, recorder

SECRETS = {
    "WANDB_API_KEY": "fakewandbkey" + "0123456789abcdef" * 2 + "0123",
    "LIT_TEST_SERVICE_TOKEN": "tok-5e1f9c3a8b7d4e2f9a0c6b1d",
}


def _wait(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended first:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _step(ckpt: Path) -> int:
    return safe_load(ckpt)["global_step"] if ckpt.exists() else -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    """An uninterrupted 9-step run, with fake secrets in the environment."""
    tmp = tmp_path_factory.mktemp("reference")
    record = tmp / "losses.jsonl"
    config = recipe(tmp / "run", 9, [recorder(record)])
    code, out, err = _wait(popen("fit", "--config", str(config), env=SECRETS))
    assert code == 0, err[-3000:]
    return tmp / "run", losses(record)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_losses(reference, tmp_path: Path) -> None:
    _, expected = reference
    record = tmp_path / "losses.jsonl"
    config = recipe(tmp_path / "run", 9, [recorder(record, sleep=0.4)])
    command = ("fit", "--config", str(config), "--ckpt_path", "last")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = popen(*command)
    # Kill after the step-3 checkpoint and two more steps, i.e. mid-interval.
    _wait_for(lambda: max(losses(record), default=0) >= 5 and last.exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _step(last)
    assert 3 <= killed_at < 9
    code, _, err = _wait(popen(*command))  # the same command
    assert code == 0, err[-3000:]
    resumed = losses(record)
    assert sorted(resumed) == sorted(expected) == list(range(1, 10))
    worst = max(abs(resumed[s] - expected[s]) for s in expected)
    print(f"killed with last.ckpt at step {killed_at}; max |loss difference| {worst:.3g}")
    assert worst <= 1e-6, (worst, resumed, expected)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits(tmp_path: Path) -> None:
    # Two DataLoader workers in the same process group, as under SLURM: the signal reaches
    # them too, and they must keep serving batches until the checkpoint is written.
    record = tmp_path / "losses.jsonl"
    config = recipe(tmp_path / "run", 200, [recorder(record, sleep=0.3)])
    proc = popen("fit", "--config", str(config), "--data.init_args.num_workers", "2")
    _wait_for(lambda: max(losses(record), default=0) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    code, _, err = _wait(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    step = _step(last)
    assert 2 <= step < 200 and step == max(losses(record))
    assert f"stopped by SIGTERM after step {step}; checkpoint saved to {last}" in err


def _nan_recipe(tmp: Path, guard: dict | None) -> Path:
    callbacks = [
        {"class_path": "tests.reliability.helpers.InjectNaN", "init_args": {"step": 4}},
        {"class_path": "lit_unitscale.callbacks.ScaleMonitor", "init_args": {"every_n_steps": 1}},
    ]
    return recipe(tmp / "run", 6, callbacks + ([guard] if guard else []))


@pytest.mark.slow
def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    code, _, err = _wait(popen("fit", "--config", str(_nan_recipe(tmp_path, None))))
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    message = next(line for line in err.splitlines() if line.startswith("lit_unitscale: "))
    assert message.startswith("lit_unitscale: training stopped at step 4: loss is nan")
    assert "first non-finite: block0/act (ScaleMonitor, step 4)" in message
    checkpoint = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


@pytest.mark.slow
def test_non_finite_step_skipped_and_counted(tmp_path: Path) -> None:
    guard = {
        "class_path": "lit_unitscale.callbacks.nonfinite.NonFiniteGuard",
        "init_args": {"action": "skip", "max_skips": 2},
    }
    code, _, err = _wait(popen("fit", "--config", str(_nan_recipe(tmp_path, guard))))
    assert code == 0, err[-3000:]
    checkpoint = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "NonFiniteGuard" in k]
    assert state == {"skipped": 1, "skipped_steps": [4]}


class _Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": _Explodes()}}, path)
    assert torch.equal(safe_load(path)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.ckpt"]


_SAVER = """
import sys, torch
from lit_unitscale.checkpoints import atomic_torch_save
for i in range(1000):
    atomic_torch_save({"i": i, "w": torch.full((32, 1024, 1024), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


def test_kill_9_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "0"  # one complete save
    _wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), proc)
    proc.kill()  # mid-write of the next one
    proc.wait()
    checkpoint = safe_load(path)
    assert checkpoint["w"].shape == (32, 1024, 1024)
    assert torch.all(checkpoint["w"] == checkpoint["i"])


def test_atomic_save_keeps_the_usual_file_mode(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    atomic_torch_save({"x": 1}, tmp_path / "a.ckpt")
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_no_secret_reaches_the_run_directory(reference) -> None:
    run_dir, _ = reference
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".ckpt" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} found in {path}"
