"""What the command line leaves out of a run's console: messages a user can do nothing about.

Each filter names one message exactly; nothing is silenced by category or module as a whole.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's info lines that the run summary replaces or that advertise a service.
_INFO_PREFIXES = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")


class _DropPrefixes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_INFO_PREFIXES)


def quiet() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in log.filters):
            log.addFilter(_DropPrefixes())
    # Lightning internals call a torch API deprecated in torch 2.13.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # On a machine with SLURM tools, a local run is told to use srun; jobs go through
    # `python -m lit_unitscale slurm submit`, which does.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
