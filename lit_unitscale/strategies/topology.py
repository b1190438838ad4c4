"""Check the Trainer's node/device counts against the job's environment (SLURM).

A job whose SLURM layout differs from ``trainer.num_nodes`` × ``trainer.devices`` hangs at the
rendezvous or fails with one of two separate messages; this gives one error naming both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from lit_unitscale.errors import RecipeError


class TopologyError(RecipeError):
    """The Trainer's node/device counts disagree with the environment."""


def _first_count(value: str) -> int:
    # SLURM writes per-node counts as "2", "2(x3)" or "2(x3),1".
    match = re.match(r"\s*(\d+)", value)
    if match is None:
        raise TopologyError(f"cannot read a task count from SLURM value {value!r}")
    return int(match.group(1))


def check_slurm_topology(
    devices: int, num_nodes: int, environ: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`TopologyError` when the SLURM allocation and the Trainer disagree.

    Nothing is checked outside SLURM or in an interactive SLURM shell (``bash``/``interactive``).

    Args:
        devices: processes per node the Trainer will use (``trainer.devices``).
        num_nodes: nodes the Trainer will use (``trainer.num_nodes``).
        environ: environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    problems = []
    tasks = env.get("SLURM_NTASKS_PER_NODE")
    if tasks is not None and _first_count(tasks) != devices:
        problems.append(f"--ntasks-per-node={tasks} but trainer.devices={devices}")
    nodes = env.get("SLURM_NNODES")
    if nodes is not None and int(nodes) != num_nodes:
        problems.append(f"--nodes={nodes} but trainer.num_nodes={num_nodes}")
    if problems:
        raise TopologyError(
            "the SLURM job and the Trainer disagree: "
            + "; ".join(problems)
            + ". One process runs per device: set trainer.devices to the tasks per node and "
            "trainer.num_nodes to the nodes (python -m lit_unitscale slurm renders a matching job)."
        )
