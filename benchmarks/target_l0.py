"""How fast the target-L0 controller brings a penalised SAE to the L0 a user asked for, on
real activations: every penalised architecture (relu, gated, jumprelu) is trained with
``target_l0`` at two or more run lengths, with the trainer's defaults otherwise, and the
table shows the training batch's L0 at a fifth of the run and its largest miss from there to
the end; the largest miss of the SAE's own L0 (read on a fixed held-out probe after every
log interval) over the same steps, which decides whether the target is met (within 10%);
how far the final SAE's L0 differs between training batches (the sampling noise in the
batch column, which no controller can remove); and the held-out L0 and FVU of the result.

    .venv/bin/python benchmarks/target_l0.py --store runs/gemma_mlp9 --target-l0 40 --steps 150,1500
    .venv/bin/python benchmarks/target_l0.py --store runs/gemma_mlp9 --steps 1500 --archs jumprelu --trace

The store's last ``--heldout`` rows are held out; training reads the others (the trainer
shuffles them). One heavy process at a time: this one uses every core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import saekit
from saekit.sae.registry import ARCHITECTURES, uses_k
from saekit.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402

PENALISED = tuple(arch for arch in ARCHITECTURES if not uses_k(arch))


def fail(message: str) -> None:
    print(f"target_l0.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def l0_of(sae, x) -> float:
    with torch.no_grad():
        return float((sae.encode(x) > 0).sum(-1).float().mean())


def measure(arch: str, steps: int, rows, heldout, args) -> dict:
    """Train one SAE a step at a time; after each log interval from a fifth of the run on,
    read its L0 on a fixed held-out probe (the SAE's own L0, free of batch sampling noise);
    after the run, the spread of its L0 over fresh training batches (that noise's size)."""
    d_in = rows.shape[1]
    sae = saekit.create(arch, d_in=d_in, d_sae=args.expansion * d_in, seed=args.seed, target_l0=args.target_l0)
    every, fifth = max(1, steps // 50), steps // 5
    trainer = Trainer(sae, rows, steps=steps, batch_size=args.batch, log_every=every, seed=args.seed, progress=False)
    order = torch.randperm(heldout.shape[0], generator=torch.Generator().manual_seed(args.seed))
    probe = heldout[order[: args.probe]]  # a sample of the held-out rows, not one stretch of text
    probed: list[tuple[int, float]] = []
    seconds = 0.0
    try:
        batches = trainer.batches()
        while not trainer.done:
            started = time.perf_counter()
            trainer.step(next(batches))
            seconds += time.perf_counter() - started
            if trainer.step_index >= fifth and trainer.step_index % every == 0:
                probed.append((trainer.step_index, l0_of(sae, probe * trainer.scale)))
            if args.trace and trainer.step_index % every == 0:
                print(trace_line(trainer, args.batch), flush=True)
        result = trainer.finish()
    finally:
        trainer.close()
    batch_l0 = [l0_of(sae, next(batches)) for _ in range(args.spread_batches)]  # the trained SAE, raw rows
    mean_batch_l0 = sum(batch_l0) / len(batch_l0)
    history = [(entry["step"], entry["l0"]) for entry in result.history]
    at_fifth = min(history, key=lambda entry: abs(entry[0] - fifth))[1]
    metrics = saekit.evaluate(sae, heldout, batch_size=4096)
    miss = lambda l0: abs(l0 / args.target_l0 - 1)  # noqa: E731
    worst, worst_step = max((miss(l0), step) for step, l0 in history if step >= fifth)
    held_worst, held_step = max((miss(l0), step) for step, l0 in probed)
    return {
        "arch": arch,
        "steps": steps,
        "l0_at_fifth": at_fifth,
        "worst_after_fifth": worst,
        "worst_step": worst_step,
        "heldout_worst": held_worst,
        "heldout_worst_step": held_step,
        "batch_spread": max(abs(v / mean_batch_l0 - 1) for v in batch_l0),
        "within_10": held_worst <= 0.10,
        "heldout_l0": metrics["l0"],
        "fvu": metrics["fvu"],
        "seconds": seconds,
    }


def trace_line(trainer: Trainer, batch: int) -> str:
    """One line of ``--trace``: the step's batch L0 and explained variance, λ, the controller's
    drift D, the share of latents silent for 10 batches, and, for per-feature thresholds
    (JumpReLU's θ), their 10th, 50th and 90th percentiles and largest over the live latents."""
    sae, entry = trainer.sae, trainer.history[-1]
    silent = sae.tokens_since_fired >= 10 * batch
    line = (
        f"  step {entry['step']:5d}  L0 {entry['l0']:6.1f}  EV {entry['explained_variance']:.3f}"
        f"  λ {float(sae.sparsity_coefficient):.3g}  D {trainer.controller.state()['drift']:+.3f}"
        f"  silent {float(silent.float().mean()):.3f}"
    )
    if sae.threshold_kind == "per_feature" and (~silent).any():
        theta = sae.threshold.detach().float()[~silent]
        q = torch.quantile(theta, torch.tensor([0.1, 0.5, 0.9]))
        line += f"  θ q10/50/90 {q[0]:.3g} {q[1]:.3g} {q[2]:.3g} max {theta.max():.3g}"
    return line


def table_row(r: dict) -> dict[str, str]:
    """One measured row as the table shows it."""
    return {
        "arch": r["arch"],
        "steps": str(r["steps"]),
        "batch L0 at a fifth": f"{r['l0_at_fifth']:.1f}",
        "largest batch miss after it (step)": f"{100 * r['worst_after_fifth']:.1f}% ({r['worst_step']})",
        "largest miss of the SAE's L0 after it (step)": f"{100 * r['heldout_worst']:.1f}% ({r['heldout_worst_step']})",
        "within 10%": "yes" if r["within_10"] else "no",
        "final SAE's batch-to-batch spread": f"{100 * r['batch_spread']:.1f}%",
        "held-out L0": f"{r['heldout_l0']:.1f}",
        "FVU": f"{r['fvu']:.4f}",
        "s": f"{r['seconds']:.0f}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="an activation store (saekit harvest)")
    parser.add_argument("--target-l0", type=float, default=40.0)
    parser.add_argument("--steps", default="150,1500", help="run lengths, comma-separated")
    parser.add_argument("--archs", default=",".join(PENALISED))
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--heldout", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=8192, help="held-out rows whose L0 is read during training")
    parser.add_argument("--spread-batches", type=int, default=16, help="training batches the final L0 is read on")
    parser.add_argument(
        "--trace", action="store_true", help="print λ, the drift, silent latents and θ's quantiles every log interval"
    )
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in PENALISED]
    if unknown:
        fail(f"--archs {','.join(unknown)}: not a penalised architecture; choose from {', '.join(PENALISED)}.")
    try:
        steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        fail(f"--steps {args.steps!r}: give whole numbers separated by commas, e.g. 150,1500.")
    if not archs or not steps:
        fail("--archs and --steps each need at least one value.")
    store = saekit.open_store(args.store)
    n = store.activations.shape[0]
    if args.probe < 1 or args.spread_batches < 1:
        fail("--probe and --spread-batches must be at least 1.")
    if not 0 < args.heldout < n:
        fail(f"--heldout {args.heldout}: the store has {n} rows; hold out between 1 and {n - 1}.")
    rows = store.activations[: n - args.heldout]
    heldout = store.activations[n - args.heldout :].float()
    print(
        f"{args.store}: {rows.shape[0]:,} training rows of width {rows.shape[1]}, {args.heldout:,} held out; "
        f"target L0 {args.target_l0:g}, {args.expansion}x latents, batches of {args.batch:,}",
        flush=True,
    )
    results = []
    for arch in archs:
        for budget in steps:
            row = measure(arch, budget, rows, heldout, args)
            results.append(row)
            print(f"  {arch} {budget} steps: {row}", flush=True)
    print()
    print(markdown_table([table_row(r) for r in results], list(table_row(results[0]))))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
