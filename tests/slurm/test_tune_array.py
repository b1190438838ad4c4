"""A search's trials as a SLURM job array on the local two-node cluster: every task runs its
own trial and appends its line, the driver waits for the array, and a rerun submits nothing."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest

from lit_unitscale.tools.search import SlurmArray, load_rows, run_trials
from lit_unitscale.tools.tune import log_grid, tune
from tests.conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@dataclasses.dataclass
class Bowl:
    """A cheap objective the array's tasks import from here: best at lr 1, attn_mult 2."""

    offset: float = 3.0

    def __call__(self, s: dict) -> dict:
        loss = self.offset + math.log2(s["lr"]) ** 2 + (math.log2(s.get("attn_mult", 2)) - 1) ** 2
        return {
            "val_loss": loss,
            "job": os.environ.get("SLURM_ARRAY_JOB_ID"),
            "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "host": os.uname().nodename,
        }


def test_trials_run_as_a_job_array_and_resume(slurm_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the tasks import this module from the repository
    results = tmp_path / "results.jsonl"
    trials = [{"lr": lr, "steps": 1} for lr in log_grid(1.0, 2)]
    slurm = SlurmArray(time="00:05:00", poll_s=0.5, timeout_s=180)
    rows = run_trials(trials, Bowl(), results, executor="slurm", slurm=slurm)
    assert [r["lr"] for r in rows] == [t["lr"] for t in trials]
    assert [r["val_loss"] for r in rows] == [Bowl()(t)["val_loss"] for t in trials]
    # One array, one task per trial, each trial once.
    assert len({r["job"] for r in rows}) == 1 and None not in {r["job"] for r in rows}
    assert sorted(int(r["task"]) for r in rows) == list(range(len(trials)))
    assert len(load_rows(results)) == len(trials)
    # A rerun finds every trial recorded and submits nothing.
    (tmp_path / "slurm").rename(tmp_path / "slurm-first")
    assert run_trials(trials, Bowl(), results, executor="slurm", slurm=slurm) == rows
    assert not (tmp_path / "slurm").exists()


def test_tune_runs_its_stages_as_job_arrays(slurm_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    recipe = str(ROOT / "tests" / "fixtures" / "recipes" / "decoder-tiny.yaml")
    out = tmp_path / "tune"
    result = tune(
        [recipe],
        out=out,
        proxy_steps=2,
        lrs=log_grid(1.0, 1),
        span=1,
        hyperparameters=["attn_mult"],
        executor="slurm",
        time="00:05:00",
        objective=Bowl(),
    )
    assert result["chosen"]["lr"] == 1.0 and result["chosen"]["attn_mult"] == 2.0
    # Two arrays: the LR sweep and attn_mult's search; the combination (attn_mult 2 alone) was
    # already one of attn_mult's trials, so it is not submitted again.
    rows = load_rows(out / "results.jsonl")
    assert len({r["job"] for r in rows}) == 2 and len(rows) == 3 + 2
    assert "      attn_mult: 2  #" in (out / "tuned.yaml").read_text()
