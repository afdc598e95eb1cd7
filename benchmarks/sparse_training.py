"""Whole training runs with and without the sparse path, on stored activations.

relu, gated and jumprelu start dense (a fresh SAE fires about half its features) and,
once L0 falls under ``sparse_below`` of d_sae, train sparsely (sparse_decode.py). This
trains each twice on the same store, same seed, same steps — once with the default
(``sparse_below`` 0.04), once held dense (``sparse_below`` 0) — and prints wall time,
tokens/s, the final L0 and explained variance on held-out rows of the store: the
speed-up of a real run, and that it changes nothing else.

    saekit harvest --model smollm2 --hook layers.15.resid_post --corpus default --tokens 300000 --out runs/store
    .venv/bin/python benchmarks/sparse_training.py runs/store --steps 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    import saekit
    from saekit.data.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="an activation store (saekit harvest)")
    parser.add_argument("--archs", nargs="+", default=["relu", "gated", "jumprelu"])
    parser.add_argument("--target-l0", type=float, default=32)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--held-out", type=int, default=16384, help="rows at the end of the store, not trained on")
    args = parser.parse_args(argv)

    x = open_store(args.store).activations[:]  # [tokens, d_in], in store order
    train, held_out = x[: -args.held_out], x[-args.held_out :].float()
    rows = []
    for arch in args.archs:
        for path, sparse_below in (("sparse when L0 < 4%", 0.04), ("dense", 0.0)):
            sae = saekit.create(
                arch, d_in=x.shape[1], d_sae=args.expansion * x.shape[1], target_l0=args.target_l0, seed=0
            )
            sae.sparse_below = sparse_below
            start = time.perf_counter()
            result = saekit.train(
                sae, train, steps=args.steps, batch_size=args.batch_size, lr=8e-4, progress=False, device="cpu"
            )
            seconds = time.perf_counter() - start
            metrics = saekit.evaluate(result.sae, held_out)
            rows.append(
                {
                    "arch": arch,
                    "path": path,
                    "seconds": f"{seconds:.0f}",
                    "tokens/s": f"{args.steps * args.batch_size / seconds:,.0f}",
                    "L0": f"{metrics['l0']:.2f}",
                    "explained variance": f"{metrics['explained_variance']:.4f}",
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print(
        f"{args.store}: {len(train):,} training rows, d_in {x.shape[1]}, d_sae {args.expansion * x.shape[1]}, "
        f"{args.steps} steps of {args.batch_size} tokens, target L0 {args.target_l0:g}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print(markdown_table(rows, ["arch", "path", "seconds", "tokens/s", "L0", "explained variance"]))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
