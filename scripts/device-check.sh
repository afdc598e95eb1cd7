#!/usr/bin/env bash
# The GPU checks in one call on a lent CUDA machine, with that machine's own python3 and
# torch (saekit from src/, nothing installed): the CUDA tests, then the CUDA benchmark.
#
#   bash scripts/device-check.sh [cuda_throughput.py options]
#
# Logs go to $OUT (the device tool's folder) or /tmp/device-check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.log" | tail -3
timeout 420 python3 benchmarks/cuda_throughput.py "$@" 2>"$OUT/bench.err" | tee "$OUT/bench.log"
grep -E "Error|error" "$OUT/bench.err" | head -5
