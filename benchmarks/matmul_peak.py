"""This machine's matmul peak, fp32 and bf16: the ceiling the training benchmark is read against.

Measures a square matmul and the five matmuls of one dense SAE training step at
B = 4096 tokens, d_in = 576, d_sae = 9216, each in the memory layout a step uses
(``.T`` marks a transposed operand view, as autograd produces them):

    encode      x[B,d]   @ W_enc[d,M]
    decode      f[B,M]   @ W_dec[M,d]
    dL/dW_dec   f.T[M,B] @ g[B,d]
    dL/df       g[B,d]   @ W_dec.T[d,M]
    dL/dW_enc   x.T[d,B] @ h[B,M]

The "SAE step (matmuls only)" row is the five together: B / their summed time is the
tokens/s a training step could reach if it did nothing but these matmuls.

    .venv/bin/python benchmarks/matmul_peak.py          # any venv with torch
"""

from __future__ import annotations

import time

import torch
from _timing import command_line, markdown_table

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _shapes(batch: int, d_in: int, d_sae: int) -> dict[str, tuple[tuple[int, int], tuple[int, int], bool, bool]]:
    """name -> (A's stored shape, B's stored shape, transpose A, transpose B)."""
    B, d, M = batch, d_in, d_sae
    return {
        "square 2048³": ((2048, 2048), (2048, 2048), False, False),
        "encode x@W_enc": ((B, d), (d, M), False, False),
        "decode f@W_dec": ((B, M), (M, d), False, False),
        "dW_dec f.T@g": ((B, M), (B, d), True, False),
        "df g@W_dec.T": ((B, d), (M, d), False, True),
        "dW_enc x.T@h": ((B, d), (B, M), True, False),
    }


def _time_matmul(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``a @ b`` after two warm-up runs: a peak is the best
    the machine does, and the fastest run is the one least disturbed by neighbours."""
    for _ in range(2):
        a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def measure_matmuls(batch: int = 4096, d_in: int = 576, d_sae: int = 9216, repeats: int = 7) -> list[dict]:
    """One row per shape: GFLOP/s for each dtype, plus the SAE-step row."""
    rows = []
    step_seconds = {name: 0.0 for name in DTYPES}
    step_flops = 0.0
    for shape_name, (a_shape, b_shape, t_a, t_b) in _shapes(batch, d_in, d_sae).items():
        row: dict = {"matmul": shape_name}
        for dtype_name, dtype in DTYPES.items():
            a = torch.randn(a_shape).to(dtype)
            b = torch.randn(b_shape).to(dtype)
            a, b = (a.T if t_a else a), (b.T if t_b else b)
            flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
            seconds = _time_matmul(a, b, repeats)
            row[f"{dtype_name} GFLOP/s"] = flops / seconds / 1e9
            if not shape_name.startswith("square"):
                step_seconds[dtype_name] += seconds
        if not shape_name.startswith("square"):
            step_flops += flops
        rows.append(row)
    step_row: dict = {"matmul": "SAE step (matmuls only)"}
    for dtype_name, seconds in step_seconds.items():
        step_row[f"{dtype_name} GFLOP/s"] = step_flops / seconds / 1e9
        step_row[f"{dtype_name} tokens/s"] = batch / seconds
    rows.append(step_row)
    return rows


def measure_peak(batch: int = 4096, d_in: int = 576, d_sae: int = 9216, repeats: int = 7) -> dict[str, float]:
    """This machine's matmul peak in GFLOP/s: {"fp32": ..., "bf16": ...}, the best over
    the square and SAE shapes, plus {"fp32_step_tokens_per_s", "bf16_step_tokens_per_s"}:
    the tokens/s of a step that did only its five matmuls."""
    rows = measure_matmuls(batch, d_in, d_sae, repeats)
    peak = {name: max(row[f"{name} GFLOP/s"] for row in rows[:-1]) for name in DTYPES}
    for name in DTYPES:
        peak[f"{name}_step_tokens_per_s"] = rows[-1][f"{name} tokens/s"]
    return peak


def main() -> None:
    rows = measure_matmuls()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(markdown_table(rows, ["matmul", "fp32 GFLOP/s", "bf16 GFLOP/s", "fp32 tokens/s", "bf16 tokens/s"]))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
