"""Shared helpers for the benchmarks: a step timer, per-step peak memory, a markdown table.

Peak memory is the kernel's resident high-water mark (``VmHWM`` in /proc/self/status).
Writing "5" to /proc/self/clear_refs resets it to the current RSS (Linux ≥ 4.0), so

    reset_peak_rss(); step(); peak = peak_rss_mb()

is the highest resident memory reached *during* the step, not since the process began.
Each configuration runs in its own process (see ``peers.run_isolated``) so one
configuration's allocator caches never show up in another's numbers.
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{key} not found in {_STATUS}; peak memory needs Linux /proc.")
    return int(match.group(1))


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Highest resident memory since the last ``reset_peak_rss()`` (or process start), in MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> None:
    """Reset the resident high-water mark to the current RSS."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as error:
        raise RuntimeError(
            f"cannot reset the peak-RSS counter ({error}); needs Linux with a writable "
            "/proc/self/clear_refs. Run each configuration in a fresh process instead."
        ) from error


@dataclass
class StepTiming:
    """Seconds per step of the timed (post-warm-up) steps, and memory around them."""

    seconds: list[float]
    """Wall time of each timed step."""
    rss_before_mb: float
    """Resident memory just before the first timed step (model, optimiser state, data)."""
    peak_mb: float
    """Highest resident memory reached during the timed steps (absolute)."""
    extra: dict = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def step_mb(self) -> float:
        """Memory a step adds on top of what is already resident (activations, grads' temporaries)."""
        return self.peak_mb - self.rss_before_mb


def time_steps(step: Callable[[int], object], warmup: int = 3, steps: int = 10) -> StepTiming:
    """Run ``step(i)`` ``warmup`` times untimed, then ``steps`` times timed.

    Warm-up lets optimiser state be allocated, lazy initialisations (geometric-median
    bias init, oneDNN kernel selection) run, and allocator caches fill, so the timed
    steps are the steady state. Memory is the peak over the timed steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    for i in range(warmup):
        step(i)
    rss_before = rss_mb()
    reset_peak_rss()
    seconds = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - start)
    return StepTiming(seconds=seconds, rss_before_mb=rss_before, peak_mb=peak_rss_mb())


def sae_step_flops(batch: int, d_in: int, d_sae: int) -> float:
    """Nominal FLOPs of one dense SAE training step: five [B, d_in] × [d_in, d_sae]-sized
    matmuls (encode, decode; backward: dL/dW_dec, dL/df, dL/dW_enc — the input needs no
    gradient), 2·B·d_in·d_sae each. Sparse decoders do less real work, so their GFLOP/s
    on this count is an *effective* rate that can exceed the matmul peak."""
    return 10.0 * batch * d_in * d_sae


def markdown_table(rows: Sequence[dict], columns: Sequence[str], *, floatfmt: str = ",.0f") -> str:
    """Rows of dicts as a GitHub markdown table; numbers formatted with ``floatfmt``,
    missing values shown as "–"."""

    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return format(value, floatfmt)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def command_line() -> str:
    """The command that produced this output, for pasting under a table."""
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
    return " ".join([python, *sys.argv])
