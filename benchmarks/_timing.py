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
from dataclasses import dataclass
from pathlib import Path

import torch

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


_PRESSURE = Path("/proc/pressure/cpu")


def cpu_stall_us() -> int | None:
    """Microseconds, since boot, in which some runnable task on this machine waited for a
    CPU (Linux PSI, /proc/pressure/cpu "some total"); None where PSI is unavailable.
    Its growth over a timed window, divided by the window, is the share of that window
    the machine was oversubscribed: ~0 on an idle machine, near 1 when a neighbour is busy."""
    try:
        match = re.search(r"^some .*total=(\d+)", _PRESSURE.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


@dataclass
class StepTiming:
    """Seconds per step of the timed (post-warm-up) steps, and memory around them."""

    seconds: list[float]
    """Wall time of each timed step."""
    rss_before_mb: float
    """Resident memory just before the first timed step (model, optimiser state, data)."""
    peak_mb: float
    """Highest resident memory reached during the timed steps (absolute)."""
    cpu_util: float
    """Process CPU time ÷ (wall time × torch threads) over the timed steps; below ~0.8 on a
    step that is mostly large matmuls means the process did not get its cores."""
    cpu_stall: float | None
    """Share of the timed wall time in which some task waited for a CPU (PSI); None without PSI."""

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
    stall_start, cpu_start, wall_start = cpu_stall_us(), time.process_time(), time.perf_counter()
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall_start
    cpu_util = (time.process_time() - cpu_start) / (wall * torch.get_num_threads())
    stall_end = cpu_stall_us()
    cpu_stall = None if stall_start is None or stall_end is None else (stall_end - stall_start) / 1e6 / wall
    return StepTiming(
        seconds=seconds, rss_before_mb=rss_before, peak_mb=peak_rss_mb(), cpu_util=cpu_util, cpu_stall=cpu_stall
    )


def sae_step_flops(batch: int, d_in: int, d_sae: int, arch: str = "") -> float:
    """Nominal FLOPs of one dense SAE training step: five [B, d_in] × [d_in, d_sae]-sized
    matmuls (encode, decode; backward: dL/dW_dec, dL/df, dL/dW_enc — the input needs no
    gradient), 2·B·d_in·d_sae each; seven for a gated SAE, whose auxiliary loss decodes
    ReLU(π_gate) too and back-propagates through that decode to the gate (a row whose name
    contains "gated"). Sparse paths do less real work, so their GFLOP/s on this count is an
    *effective* rate that can exceed the matmul peak."""
    matmuls = 7 if "gated" in arch else 5
    return 2.0 * matmuls * batch * d_in * d_sae


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
