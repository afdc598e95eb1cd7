#!/usr/bin/env bash
# Creates .venv-bench: saekit plus the peer SAE libraries the throughput benchmark
# compares against (SAELens, EleutherAI sparsify, dictionary_learning), all on one
# torch so a single process can time them side by side.
#
#   bash scripts/bench-env.sh            # create or update .venv-bench
#   .venv-bench/bin/python benchmarks/peers.py
#
# Kept apart from .venv because the peers pull a long tail of dependencies
# (transformer_lens, datasets, wandb, nnsight, ...) that saekit itself does not need.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-bench}
TORCH_VERSION=2.13.0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

# torch first, pinned to the local CPU build; the constraint keeps every later
# resolver step from replacing it (the peers declare loose torch ranges).
$PIP install -q "torch==$TORCH_VERSION"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

# The peers, with the same specifiers as saekit's `bench` extra (pyproject.toml).
$PIP install -q -c "$CONSTRAINTS" -e '.[bench]'

# dictionary-learning needs nnsight, which declares torchvision; PyPI's torchvision wheel
# is a CUDA build (needs libc10_cuda.so), so with the CPU torch its import fails, and
# transformers, finding it installed, then fails on `from transformers import
# PreTrainedModel` (which sparsify and SAELens import). Nothing the benchmark runs uses
# torchvision, and everything imports cleanly without it, so remove it.
$PIP uninstall -q -y torchvision 2>/dev/null || true

$VENV/bin/python - <<'EOF'
from importlib.metadata import version
for name in ("torch", "sae-lens", "eai-sparsify", "dictionary-learning", "saekit"):
    print(f"{name:20s} {version(name)}")
EOF
