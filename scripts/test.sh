#!/usr/bin/env bash
# Set up everything (venv, installs) and run the whole test suite, slow and SLURM tests included.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=offline WANDB_SILENT=true
python -m pytest -q "$@"
