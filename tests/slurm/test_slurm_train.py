"""End to end: `slurm submit` trains a tiny recipe on 2 nodes, then survives a requeue signal.

The batch script gets SIGUSR1 as it would 90 s before its time limit (`--signal=B:SIGUSR1@90`):
it requeues the job, which starts again and resumes from the last checkpoint (`--ckpt_path last`).
"""

from __future__ import annotations

import csv
import math
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lit_unitscale.tools import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MAX_STEPS = 16
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
    init_args: {{save_dir: run, name: csv, version: 0, flush_logs_every_n_steps: 1}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: run/checkpoints, save_last: true, every_n_train_steps: 4}}
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


def wait_for_file(pattern: str, folder: Path, timeout: float) -> Path:
    """Poll until a file matching ``pattern`` appears in ``folder``.

    Args:
        pattern: a glob pattern.
        folder: where to look.
        timeout: seconds before the test fails.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.3)
    pytest.fail(f"no {pattern} in {folder} after {timeout:.0f} s")


def test_train_two_nodes_then_requeue_and_resume(
    slurm_cluster: str, wait_for_job, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus.txt")
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    logs = tmp_path / "logs"
    argv = ["submit", "--config", "tiny.yaml", "--nodes", "2", "--gpus-per-node", "1"]
    argv += ["--accelerator", "cpu", "--cpus-per-task", "1", "--master-addr", "127.0.0.1"]
    argv += ["--output-dir", str(logs)]
    assert slurm.main(argv) == 0
    job_id = capsys.readouterr().out.split()[2]
    err_log = logs / f"tiny-{job_id}.err"

    # Training has started once the first periodic checkpoint exists: send the time-limit
    # warning now, to the batch script, as SLURM would.
    wait_for_file("epoch=*.ckpt", tmp_path / "run" / "checkpoints", timeout=60)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)

    state = wait_for_job(job_id, timeout=120)
    out = (logs / f"tiny-{job_id}.out").read_text()
    err = err_log.read_text()
    assert state == "COMPLETED", out + err
    assert "requeueing job" in out and "restart 1" in out, out
    assert "Restoring states from the checkpoint path at" in err, err
    assert str(tmp_path / "run" / "checkpoints" / "last.ckpt") in err, err

    # Both ranks trained on two nodes, twice, and finished at max_steps with finite losses.
    assert err.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2, err
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == MAX_STEPS
    weights = [v for v in last["state_dict"].values() if v.is_floating_point()]
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights)
    # When the signal lands in the last steps, the requeued job resumes at max_steps and its
    # logger starts an empty file; otherwise every logged loss must be finite.
    losses = []
    for path in sorted((tmp_path / "run" / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            losses += [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert all(math.isfinite(loss) for loss in losses)
