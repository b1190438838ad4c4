"""The local two-node SLURM cluster (slurm/local-cluster.sh) as a session fixture."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "slurm" / "local-cluster.sh"
CLUSTER_DIR = Path(os.environ.get("LIT_SLURM_DIR", "/tmp/lit-unitscale-slurm"))
EXIT_CANNOT_RUN = 77  # local-cluster.sh: not root, or slurm missing and no apt
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _cluster(command: str) -> subprocess.CompletedProcess[str]:
    """Run ``local-cluster.sh <command>`` and capture its output.

    Args:
        command: start, stop, status or env.
    """
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), command], capture_output=True, text=True, check=False
    )


def _update_users(delta: int) -> int:
    """Register (+1) or unregister (-1) this test session as a user of the cluster; returns how
    many sessions use it now. One file per session, named by its pid: a session that was killed
    before its teardown stops counting once its process is gone.

    Args:
        delta: +1 when a session starts using it, -1 when it is done.
    """
    users = CLUSTER_DIR / ".pytest-users.d"
    users.mkdir(exist_ok=True)
    mine = users / str(os.getpid())
    if delta > 0:
        mine.touch()
    else:
        mine.unlink(missing_ok=True)
    alive = 0
    for entry in users.iterdir():
        try:
            os.kill(int(entry.name), 0)
            alive += 1
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's process
            alive += 1
    return alive


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """Start the local cluster (installing slurm if needed); yields the SLURM_CONF path.

    Skips only where the cluster cannot run: not root, or slurm missing and no apt-get.
    The cluster is stopped at the end unless it was already running before the tests.
    """
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurm/local-cluster.sh)")
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(CLUSTER_DIR.parent / f"{CLUSTER_DIR.name}.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        was_running = _cluster("status").returncode == 0
        if not was_running:
            (CLUSTER_DIR / ".pytest-started").write_text("")
        started = time.monotonic()
        result = _cluster("start")
        if result.returncode == EXIT_CANNOT_RUN:
            pytest.skip(result.stderr.strip() or "local SLURM cluster cannot run here")
        if result.returncode != 0:
            pytest.fail(f"local-cluster.sh start failed:\n{result.stdout}{result.stderr}")
        print(f"local SLURM cluster ready in {time.monotonic() - started:.1f} s")
        _update_users(+1)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    conf = re.search(r"SLURM_CONF=(\S+)", _cluster("env").stdout).group(1)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        marker = CLUSTER_DIR / ".pytest-started"
        if _update_users(-1) == 0 and marker.exists():
            marker.unlink()
            _cluster("stop")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def job_state(job_id: str) -> str:
    """The job's state from ``scontrol show job`` (no accounting database needed).

    Args:
        job_id: the SLURM job id.
    """
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"JobState=(\S+)", out).group(1)


def _wait_for_job(job_id: str, timeout: float = 60.0, states: set[str] = TERMINAL_STATES) -> str:
    """Poll until the job reaches one of ``states``; returns that state.

    Args:
        job_id: the SLURM job id.
        timeout: seconds before the test fails.
        states: the states to wait for (default: any final state).
    """
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state not in states:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            pytest.fail(f"job {job_id} still {state} after {timeout:.0f} s")
        time.sleep(0.3)
        state = job_state(job_id)
    return state


def _sbatch(*args: str) -> str:
    """Submit with ``sbatch --parsable``; returns the job id.

    Args:
        args: sbatch options and the script.
    """
    result = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


@pytest.fixture
def wait_for_job(slurm_cluster: str):
    """``wait_for_job(job_id, timeout=60, states=final states) -> state``, polling scontrol."""
    return _wait_for_job


@pytest.fixture
def sbatch(slurm_cluster: str):
    """``sbatch(*args) -> job id`` on the local cluster."""
    return _sbatch
