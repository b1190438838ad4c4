"""Jobs on the local two-node cluster: a 2-node all_reduce, a requeue, a submit via the tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lit_unitscale.tools import slurm

pytestmark = pytest.mark.slurm

ALLREDUCE = """\
import os
import torch
import torch.distributed as dist

rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank={rank} node={os.environ['SLURM_NODEID']} host={os.environ['SLURMD_NODENAME']} "
      f"world={world} sum={value.item():g}", flush=True)
dist.destroy_process_group()
"""

JOB = """\
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:02:00
set -euo pipefail
# Node names do not resolve on the local cluster: rendezvous on the loopback address.
export MASTER_ADDR=127.0.0.1
export MASTER_PORT=$((15000 + SLURM_JOB_ID % 20000))
srun --kill-on-bad-exit=1 {python} {script}
"""


def test_two_node_allreduce(sbatch, wait_for_job, tmp_path: Path) -> None:
    (tmp_path / "allreduce.py").write_text(ALLREDUCE)
    job = tmp_path / "job.sbatch"
    job.write_text(JOB.format(python=sys.executable, script=tmp_path / "allreduce.py"))
    out = tmp_path / "job.out"
    job_id = sbatch(f"--output={out}", f"--chdir={tmp_path}", str(job))
    state = wait_for_job(job_id, timeout=60)
    log = out.read_text()
    assert state == "COMPLETED", log
    lines = sorted(line for line in log.splitlines() if line.startswith("rank="))
    assert lines == [
        "rank=0 node=0 host=n1 world=2 sum=3",
        "rank=1 node=1 host=n2 world=2 sum=3",
    ], log


def test_requeue_restarts_the_job(sbatch, wait_for_job, tmp_path: Path) -> None:
    out = tmp_path / "requeue.out"
    # The first run waits to be requeued; the second sees SLURM_RESTART_COUNT=1 and ends.
    script = (
        'echo "restart=${SLURM_RESTART_COUNT:-0}"; '
        '[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || sleep 60'
    )
    job_id = sbatch(
        "--requeue", "--open-mode=append", f"--output={out}", "--nodes=1", "--wrap", script
    )
    wait_for_job(job_id, timeout=30, states={"RUNNING"})
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    state = wait_for_job(job_id, timeout=60)
    log = out.read_text()
    assert state == "COMPLETED", log
    assert "restart=0" in log and "restart=1" in log, log


def test_submit_with_the_tool(slurm_cluster, wait_for_job, tmp_path: Path, capsys) -> None:
    """`slurm submit` writes the script, runs sbatch and names the logs; a stand-in template
    echoes the fit arguments instead of training."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("trainer:\n  max_steps: 1\n")
    template = tmp_path / "echo.sbatch"
    template.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=${nodes}\n"
        "#SBATCH --ntasks-per-node=${tasks_per_node}\n"
        "#SBATCH --cpus-per-task=${cpus_per_task}\n"
        "#SBATCH --output=${output_dir}/%x-%j.out\n"
        "#SBATCH --job-name=${job_name}\n"
        "srun bash -c 'echo \"$$SLURM_PROCID $$*\"' _ ${fit_args}\n"
    )
    out_dir = tmp_path / "out"
    argv = ["submit", "--config", str(recipe), "--nodes", "2", "--accelerator", "cpu"]
    argv += ["--cpus-per-task", "1", "--output-dir", str(out_dir), "--template", str(template)]
    assert slurm.main(argv) == 0
    printed = capsys.readouterr().out
    job_id = printed.split()[2]
    assert f"{out_dir}/tiny-{job_id}.out" in printed
    assert (out_dir / "tiny.sbatch").is_file()
    assert wait_for_job(job_id, timeout=30) == "COMPLETED"
    lines = sorted((out_dir / f"tiny-{job_id}.out").read_text().splitlines())
    assert [line.split()[0] for line in lines] == ["0", "1"]
    assert "--trainer.num_nodes 2 --trainer.devices 1 --trainer.accelerator cpu" in lines[0]
