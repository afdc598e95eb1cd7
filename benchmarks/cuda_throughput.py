"""Training-step throughput on a CUDA GPU: every architecture, against the GPU's measured
bf16 matmul peak, beside a plain-PyTorch dense ReLU SAE.

A row is one full step of saekit's own trainer (``Trainer.step``, bf16 autocast with
float32 master weights, fused Adam) timed with CUDA events: median of the timed steps
after a warm-up. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps
(weights, gradients, Adam state and the step's temporaries). Two sizes by default:

    issue   d_in 576, d_sae 9216, 4096 tokens a step (the CPU benchmark's configuration;
            217 GFLOP a step, a fraction of a millisecond of an H100's matmul time, so
            it measures launch and elementwise overhead more than arithmetic)
    large   d_in 2304, d_sae 36864, 16384 tokens a step (a Gemma-2-2B-sized SAE)

The bf16 peak is the best of an 8192³ bf16 matmul and the five SAE-shaped matmuls of a
step at each size, on random data.

    python benchmarks/cuda_throughput.py                 # needs a CUDA GPU
    python benchmarks/cuda_throughput.py --sizes issue --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import statistics
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table, sae_step_flops, time_steps  # noqa: E402
from peers import BenchConfig, PlainReLUSAE, activations  # noqa: E402
from train_throughput import build_saekit  # noqa: E402

ARCHS = ("relu", "gated", "jumprelu", "topk", "batchtopk")
SIZES = {
    "issue": BenchConfig(d_in=576, d_sae=9216, batch=4096),
    "large": BenchConfig(d_in=2304, d_sae=36864, batch=16384),
}


def cuda_median_ms(fn, warmup: int, steps: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, timed with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall_median_ms(fn, warmup: int, steps: int) -> float:
    """The same with a host clock (_timing.time_steps), for --dry-run on a CPU."""
    return 1e3 * time_steps(lambda _: fn(), warmup=warmup, steps=steps).median_s


# --dry-run: the script's logic on a CPU at tiny sizes, so a GPU lease is not spent on a typo.
DRY_RUN = "--dry-run" in sys.argv
DEVICE = "cpu" if DRY_RUN else "cuda"
median_ms = wall_median_ms if DRY_RUN else cuda_median_ms
if DRY_RUN:
    SIZES = {
        "issue": BenchConfig(d_in=32, d_sae=256, batch=256, k=4),
        "large": BenchConfig(d_in=64, d_sae=512, batch=512, k=4),
    }


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def matmul_peak(sizes: dict[str, BenchConfig]) -> tuple[float, list[dict]]:
    """(best bf16 TFLOP/s, one row per matmul), on random data."""
    shapes = {"square 8192³": (8192, 8192, 8192)} if DEVICE == "cuda" else {}
    for name, cfg in sizes.items():
        B, d, M = cfg.batch, cfg.d_in, cfg.d_sae
        shapes.update(
            {
                f"{name}: encode [B,d]@[d,M]": (B, d, M),
                f"{name}: decode [B,M]@[M,d]": (B, M, d),
                f"{name}: dW [M,B]@[B,d]": (M, B, d),
            }
        )
    rows = []
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=DEVICE, dtype=torch.bfloat16)
        ms = median_ms(functools.partial(torch.matmul, a, b), warmup=3, steps=20)
        rows.append({"matmul": name, "bf16 TFLOP/s": 2.0 * m * k * n / ms / 1e9})
    return max(r["bf16 TFLOP/s"] for r in rows), rows


def plain_step(cfg: BenchConfig, compile_model: bool):
    sae = PlainReLUSAE(cfg.d_in, cfg.d_sae).to(DEVICE)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=DEVICE == "cuda")
    forward = torch.compile(sae) if compile_model else sae

    def step(x):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = forward(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


ONLY = ""
"""--only: a regular expression on "size configuration"; rows that do not match are skipped."""


def measure(name: str, size: str, cfg: BenchConfig, build, peak_tflops: float, warmup: int, steps: int) -> dict | None:
    if not re.search(ONLY, f"{size} {name}"):
        return None
    try:
        return _measure(name, size, cfg, build, peak_tflops, warmup, steps)
    except Exception as error:  # one broken row must not cost the rest of a GPU lease
        print(f"{size} {name}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        traceback.print_exc()
        return {"size": size, "configuration": name, "ms/step": None, "% of bf16 peak": f"{type(error).__name__}"}


def _measure(name: str, size: str, cfg: BenchConfig, build, peak_tflops: float, warmup: int, steps: int) -> dict:
    torch.manual_seed(cfg.seed)
    x = activations(dataclasses.replace(cfg, n_batches=2)).to(DEVICE)
    batches = x.split(cfg.batch)
    step = build()
    counter = iter(range(10**9))
    for _ in range(warmup):
        step(batches[next(counter) % 2])
    synchronize()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(lambda: step(batches[next(counter) % 2]), warmup=0, steps=steps)
    tflops = sae_step_flops(cfg.batch, cfg.d_in, cfg.d_sae, name) / ms / 1e9
    row = {
        "size": size,
        "configuration": name,
        "ms/step": ms,
        "tokens/s": cfg.batch / ms * 1e3,
        "TFLOP/s (nominal)": tflops,
        "% of bf16 peak": f"{100 * tflops / peak_tflops:.0f}%",
        "peak GiB": peak_gib(),
    }
    step = x = batches = None  # free the GPU memory before the next configuration
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    print(row, file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--l0",
        type=float,
        default=64.0,
        help="also time relu, gated and jumprelu set to fire about this many features a token "
        "(peers.BenchConfig.l0), on the dense and on the sparse path; 0 to skip",
    )
    parser.add_argument("--dry-run", action="store_true", help="on a CPU, tiny sizes: check the script runs")
    parser.add_argument("--only", default="", help='regular expression on "size configuration", e.g. "^large .*relu"')
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd plain-PyTorch row")
    args = parser.parse_args(argv)
    if not (DRY_RUN or torch.cuda.is_available()):
        raise SystemExit("cuda_throughput.py needs a CUDA GPU (torch.cuda.is_available() is False).")

    global ONLY
    ONLY = args.only
    sizes = {name: SIZES[name] for name in args.sizes}
    peak, matmul_rows = matmul_peak(sizes)
    rows = []
    for size, cfg in sizes.items():
        for arch in args.archs:
            for precision in ("bfloat16", "float32"):
                label = f"saekit/{arch}" + ("+bf16" if precision == "bfloat16" else " fp32")
                build = functools.partial(build_saekit, cfg, arch=arch, precision=precision, device=DEVICE)
                rows.append(measure(label, size, cfg, build, peak, args.warmup, args.steps))
        if args.l0:  # a run past its first steps: dense path, then the sparse path forced
            at_l0 = dataclasses.replace(cfg, l0=args.l0)
            for arch in [a for a in args.archs if a in ("relu", "gated", "jumprelu")]:
                for path, below in (("dense", 0.0), ("sparse", 2.0)):
                    build = functools.partial(build_saekit, at_l0, arch=arch, device=DEVICE, sparse_below=below)
                    rows.append(
                        measure(
                            f"saekit/{arch}+bf16 L0≈{args.l0:g} {path}",
                            size,
                            at_l0,
                            build,
                            peak,
                            args.warmup,
                            args.steps,
                        )
                    )
        rows.append(
            measure(
                "plain/relu+bf16", size, cfg, functools.partial(plain_step, cfg, False), peak, args.warmup, args.steps
            )
        )
        if not args.no_compile:
            rows.append(
                measure(
                    "plain/relu+bf16 torch.compile",
                    size,
                    cfg,
                    functools.partial(plain_step, cfg, True),
                    peak,
                    args.warmup,
                    args.steps,
                )
            )

    print(
        f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU dry run'}, torch {torch.__version__}, "
        f"CUDA {getattr(torch.version, 'cuda', None)}; "
        f"median of {args.steps} steps after {args.warmup} warm-up; k {BenchConfig.k}\n"
    )
    print(markdown_table(matmul_rows, ["matmul", "bf16 TFLOP/s"], floatfmt=",.1f"))
    print()
    rows = [row for row in rows if row is not None]
    print(
        markdown_table(
            rows,
            ["size", "configuration", "ms/step", "tokens/s", "TFLOP/s (nominal)", "% of bf16 peak", "peak GiB"],
            floatfmt=",.2f",
        )
    )
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
