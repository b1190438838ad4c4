#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with torch, the project and its
# dev/deepspeed extras. Safe to rerun; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first and pinned: on a machine without a GPU this is the CPU build; a looser spec
# pulled in by another package could fetch a multi-GB CUDA build.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
fi
# Keep the installed torch: litdata requires torchvision, whose newest release would otherwise
# upgrade torch to a CUDA build; the constraint picks the torchvision release made for this torch.
TORCH_PIN=$(mktemp)
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$TORCH_PIN"
python -m pip install -q -c "$TORCH_PIN" -e ".[dev,deepspeed]" 2>&1 | grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' || true
rm -f "$TORCH_PIN"
# litdata never imports torchvision for token shards, and the index's torchvision is built for
# the CUDA torch: beside a CPU torch its import fails, which breaks transformers' model imports.
if ! python -c "import torchvision" 2>/dev/null; then
  python -m pip uninstall -q -y torchvision 2>&1 | grep -v '^WARNING' || true
fi
python -c "import lit_unitscale, lightning, torch; print('lit_unitscale ready: torch', torch.__version__, 'lightning', lightning.__version__)"
