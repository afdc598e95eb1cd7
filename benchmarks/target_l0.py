"""How fast the target-L0 controller brings a penalised SAE to the L0 a user asked for, on
real activations: every penalised architecture (relu, gated, jumprelu) is trained with
``target_l0`` at two or more run lengths, with the trainer's defaults otherwise, and the
table shows the training L0 at a fifth of the run, the largest miss from there to the end
(the target is met when it stays within 10%), and the held-out L0 and FVU of the result.

    .venv/bin/python benchmarks/target_l0.py --store runs/gemma_mlp9 --target-l0 40 --steps 150,1500

The store's last ``--heldout`` rows are held out; training reads the others (the trainer
shuffles them). One heavy process at a time: this one uses every core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import saekit
from saekit.sae.registry import ARCHITECTURES, uses_k

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402

PENALISED = tuple(arch for arch in ARCHITECTURES if not uses_k(arch))


def fail(message: str) -> None:
    print(f"target_l0.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def measure(arch: str, steps: int, rows, heldout, args) -> dict:
    d_in = rows.shape[1]
    sae = saekit.create(arch, d_in=d_in, d_sae=args.expansion * d_in, seed=args.seed, target_l0=args.target_l0)
    started = time.perf_counter()
    result = saekit.train(
        sae, rows, steps=steps, batch_size=args.batch, log_every=max(1, steps // 50), seed=args.seed, progress=False
    )
    seconds = time.perf_counter() - started
    history = [(entry["step"], entry["l0"]) for entry in result.history]
    fifth = steps // 5
    at_fifth = min(history, key=lambda entry: abs(entry[0] - fifth))[1]
    metrics = saekit.evaluate(sae, heldout, batch_size=4096)
    worst, worst_step = max((abs(l0 / args.target_l0 - 1), step) for step, l0 in history if step >= fifth)
    return {
        "arch": arch,
        "steps": steps,
        "l0_at_fifth": at_fifth,
        "worst_after_fifth": worst,
        "worst_step": worst_step,
        "within_10": worst <= 0.10,
        "heldout_l0": metrics["l0"],
        "fvu": metrics["fvu"],
        "seconds": seconds,
    }


def table_row(r: dict) -> dict[str, str]:
    """One measured row as the table shows it."""
    return {
        "arch": r["arch"],
        "steps": str(r["steps"]),
        "L0 at a fifth": f"{r['l0_at_fifth']:.1f}",
        "largest miss after it (step)": f"{100 * r['worst_after_fifth']:.1f}% ({r['worst_step']})",
        "within 10%": "yes" if r["within_10"] else "no",
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
