"""End to end: `slurm submit` trains a tiny recipe on 2 nodes, survives the time-limit warning
and ends with the same losses as a run that was never interrupted.

The batch script gets SIGUSR1 as it would 90 s before its time limit (`--signal=B:SIGUSR1@90`):
its trap sends SIGTERM to every rank, which saves last.ckpt at the end of its step and stops;
once the step has ended the script requeues the job, which starts again with the same id and
resumes from last.ckpt (`--ckpt_path last`).
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lit_unitscale.tools import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MAX_STEPS = 40
RECIPE = f"""\
seed_everything: 1
trainer:
  accelerator: cpu
  max_steps: {MAX_STEPS}
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  limit_val_batches: 0
  default_root_dir: run
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: run, name: csv, flush_logs_every_n_steps: 1}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: run/checkpoints, save_last: true, every_n_train_steps: 25}}
model:
  class_path: lit_unitscale.tasks.causal_lm.CausalLM
  init_args:
    model: {{d_model: 32, n_layers: 1, n_heads: 2, max_seq_len: 16}}
    lr: 0.01
data:
  class_path: lit_unitscale.data.causal_lm.CausalLMData
  init_args: {{corpus: corpus.txt, tokenizer: word, seq_len: 16, batch_size: 4}}
"""


def write_corpus(path: Path) -> None:
    """A small random text over a 15-word vocabulary.

    Args:
        path: the text file to write.
    """
    rng = random.Random(0)
    words = "the cat dog sat on a mat and ran to house big small red blue".split()
    lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(600))
    path.write_text("\n".join(lines) + "\n")


def submit(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, Path]:
    """Write the corpus and recipe into ``folder`` and submit a 2-node job that runs there.

    Returns the job id and the logs folder.

    Args:
        folder: the job's working directory (created).
        capsys: pytest's output capture, to read the job id that `submit` prints.
    """
    folder.mkdir()
    write_corpus(folder / "corpus.txt")
    (folder / "tiny.yaml").write_text(RECIPE)
    logs = folder / "logs"
    argv = ["submit", "--config", "tiny.yaml", "--nodes", "2", "--gpus-per-node", "1"]
    argv += ["--accelerator", "cpu", "--cpus-per-task", "1", "--master-addr", "127.0.0.1"]
    argv += ["--output-dir", str(logs)]
    cwd = Path.cwd()
    os.chdir(folder)  # the job runs where `submit` runs
    try:
        assert slurm.main(argv) == 0
    finally:
        os.chdir(cwd)
    return capsys.readouterr().out.split()[2], logs


def step_losses(run: Path) -> dict[int, float]:
    """``train/loss`` by step over every CSV log of the run (a requeued job writes a new one).

    Args:
        run: the run directory.
    """
    losses: dict[int, float] = {}
    for path in sorted((run / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


def test_requeue_near_the_time_limit_resumes_to_the_uninterrupted_losses(
    slurm_cluster: str, wait_for_job, tmp_path: Path, capsys
) -> None:
    reference_id, reference_logs = submit(tmp_path / "reference", capsys)
    job_id, logs = submit(tmp_path / "requeued", capsys)
    run = tmp_path / "requeued" / "run"

    # Once a few steps are logged, send the time-limit warning to the batch script only, as
    # SLURM would. The stop lands before the first periodic checkpoint (step 25), so the one
    # to resume from is the one the stop writes, and mid-epoch: an epoch is longer than the run.
    metrics, deadline = run / "csv" / "version_0" / "metrics.csv", time.monotonic() + 120
    while not metrics.is_file() or metrics.read_text().count("\n") < 4:  # header + 3 steps
        assert time.monotonic() < deadline, "no training steps logged after 120 s"
        time.sleep(0.3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)

    assert wait_for_job(reference_id, timeout=240) == "COMPLETED"
    state = wait_for_job(job_id, timeout=240)
    out = (logs / f"tiny-{job_id}.out").read_text()
    err = (logs / f"tiny-{job_id}.err").read_text()
    assert state == "COMPLETED", out + err
    # The trap stopped the ranks (each saved at the end of its step and exited 128 + SIGTERM),
    # waited for them, then requeued; the job came back and resumed from that checkpoint.
    assert "time limit near: stopping job" in out, out
    assert "requeueing job" in out and "(training stopped with status 143)" in out, out
    assert "restart 1" in out, out
    stopped = re.search(r"stopped by SIGTERM after step (\d+); checkpoint saved to (\S+)\.", err)
    assert stopped, err
    assert 2 <= int(stopped.group(1)) < MAX_STEPS, "the stop must land mid-run to test a resume"
    assert stopped.group(2) == str(run / "checkpoints" / "last.ckpt")
    assert f"Restoring states from the checkpoint path at {stopped.group(2)}" in err, err
    assert err.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2, err  # both ranks, both times

    # The same checkpoints as the uninterrupted job (no last-v1.ckpt beside the stop's), and the
    # final one at the same step, epoch and data position.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    reference_run = tmp_path / "reference" / "run"
    assert names == sorted(p.name for p in (reference_run / "checkpoints").iterdir()), names
    last, reference_last = (
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)
        for r in (run, reference_run)
    )
    assert last["global_step"] == reference_last["global_step"] == MAX_STEPS
    assert last["epoch"] == reference_last["epoch"]
    position = "ResumableSampling"
    assert last["callbacks"][position] == reference_last["callbacks"][position]
    # Every step's loss equals the uninterrupted run's: same weights, optimizer state and data
    # position after the resume. fp32 on gloo is deterministic; 1e-6 relative is rounding only.
    reference = step_losses(tmp_path / "reference" / "run")
    losses = step_losses(run)
    assert sorted(reference) == list(range(MAX_STEPS)), sorted(reference)
    assert sorted(losses) == sorted(reference), (sorted(losses), stopped.group(1))
    for step, loss in reference.items():
        assert math.isclose(losses[step], loss, rel_tol=1e-6), (step, losses[step], loss)
    assert (reference_logs / f"tiny-{reference_id}.out").read_text().count("restart 0") == 1
