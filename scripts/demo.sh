#!/usr/bin/env bash
# Set up everything and train the small unit-scaled decoder on Penn Treebank (offline W&B).
# The run goes to runs/ptb-tiny, or to runs/ptb-tiny-2, -3, ... when an earlier demo run is
# there (a run directory holds one run); arguments are passed to fit.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=offline
root=runs/ptb-tiny
n=1
while [ -e "$root/config.yaml" ] || [ -e "$root/checkpoints" ]; do
  n=$((n + 1))
  root=runs/ptb-tiny-$n
done
python -m lit_unitscale fit --config recipes/decoder/ptb-tiny.yaml --trainer.default_root_dir "$root" "$@"
