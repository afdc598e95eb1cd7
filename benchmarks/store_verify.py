"""What verifying a store's checksums on open costs, against the training it protects.

Opening a store checks every shard's sha256 by default (data/store.py). This times that
pass on a real store (the demo's, by default) and the demo's training steps on the same
store — TopK, k 32, 8× expansion, 4,096 tokens a step, 600 steps — and prints the
verification as a share of the 600-step run.

    saekit demo                                   # or any store: saekit harvest ... --out S
    .venv/bin/python benchmarks/store_verify.py runs/demo/store
    .venv/bin/python benchmarks/store_verify.py runs/demo/store --full   # time all 600 steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so that the next read comes from disk."""
    try:
        import os

        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    import torch

    import saekit
    from saekit.data.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="an activation store (default layout: RUN/store)")
    parser.add_argument("--steps", type=int, default=600, help="the run the verification is weighed against")
    parser.add_argument("--timed-steps", type=int, default=40, help="steps timed (after 5 warm-up steps)")
    parser.add_argument("--full", action="store_true", help="time all --steps steps instead of extrapolating")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    store = open_store(args.store, verify=False)
    size = sum(
        (args.store / f"{s['name']}.{kind}").stat().st_size for s in store.manifest["shards"] for kind in ("act", "tok")
    )
    warm = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        open_store(args.store, verify=True)
        warm.append(time.perf_counter() - started)
    cold = None
    if drop_page_cache():
        started = time.perf_counter()
        open_store(args.store, verify=True)
        cold = time.perf_counter() - started

    sae = saekit.create("topk", d_in=store.d_in, d_sae=8 * store.d_in, k=32)
    from saekit.training.trainer import Trainer

    steps = args.steps if args.full else args.timed_steps + 5
    trainer = Trainer(sae, store, steps=args.steps, batch_size=4096, lr=8e-4, progress=False)
    batches = trainer.batches()
    for _ in range(5):
        trainer.step(next(batches))
    started = time.perf_counter()
    for _ in range(steps - 5):
        trainer.step(next(batches))
    per_step = (time.perf_counter() - started) / (steps - 5)
    training = per_step * args.steps
    del torch

    verify = statistics.median(warm)
    rows = [
        {
            "what": "store",
            "value": f"{store.n_tokens:,} tokens × d_in {store.d_in} ({store.manifest['dtype']}), "
            f"{size / 1e6:,.0f} MB in {len(store.manifest['shards'])} shards",
        },
        {
            "what": f"verify on open, page cache warm (median of {args.repeats})",
            "value": f"{verify:.2f} s ({size / verify / 1e9:.2f} GB/s)",
        },
    ]
    if cold is not None:
        rows.append(
            {"what": "verify on open, page cache dropped", "value": f"{cold:.2f} s ({size / cold / 1e9:.2f} GB/s)"}
        )
    rows += [
        {"what": f"one training step (demo: topk k 32, d_sae {sae.d_sae}, 4,096 tokens)", "value": f"{per_step:.3f} s"},
        {
            "what": f"{args.steps} steps" + ("" if args.full else f" (from {steps - 5} timed)"),
            "value": f"{training:.0f} s",
        },
        {"what": "verification / training, warm", "value": f"{100 * verify / training:.2f}%"},
    ]
    if cold is not None:
        rows.append({"what": "verification / training, cold", "value": f"{100 * cold / training:.2f}%"})
    print(command_line())
    print(markdown_table(rows, ["what", "value"]))


if __name__ == "__main__":
    main()
