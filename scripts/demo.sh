#!/usr/bin/env bash
# Set up everything and train the small unit-scaled decoder on Penn Treebank (offline W&B).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=offline
python -m lit_unitscale fit --config recipes/decoder/ptb-tiny.yaml "$@"
