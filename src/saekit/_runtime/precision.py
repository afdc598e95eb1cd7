"""Whether bfloat16 is the fast precision on a device: one rule for the model and the trainer.

On CUDA, wherever the GPU supports it. On a CPU, only with native bf16 matmuls (AVX-512
BF16 or AMX). oneDNN also accepts bf16 on a CPU with plain AVX-512, where it emulates it:
measured on a 2-core Xeon with AVX-512 but no AVX-512 BF16 (benchmarks/matmul_peak.py),
bf16 matmuls ran at 62 GFLOP/s against float32's 310, so there bf16 would make every
step about 5× slower, and float32 is the default.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: no flags to read, so float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bf16 matmuls (AVX-512 BF16 or AMX) that oneDNN uses."""
    if not torch.backends.mkldnn.is_available():
        return False
    if not re.search(r"\b(avx512_bf16|amx_bf16)\b", _cpuinfo()):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 is the faster precision on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False
