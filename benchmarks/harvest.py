"""Harvest throughput: SmolLM2 activations at one layer, saekit against the naive path.

Rows, all on the same contexts of the embedded corpus, in one process:

- **naive**: ``model(ids, output_hidden_states=True)``, then ``hidden_states[L + 1]``:
  every layer, the final norm and the logits run, all hidden states are kept.
- **capture**: ``saekit.data.model.capture``: the forward stops after layer L, no logits.
- **harvest**: ``saekit.data.harvest.harvest`` end to end into a fresh store: capture,
  selecting train-mask rows, casting, writing shards, checksums, manifest.

tokens/s counts tokens run through the model (contexts × context_size); the harvest row
also gives stored rows/s (BOS is not stored). Under the table: bytes on disk per stored
token against the issue's target, 2·d_in (bf16) + 12 bytes of metadata (three int32).

    .venv/bin/python benchmarks/harvest.py                 # ≈ 2 min on 2 cores
    .venv/bin/python benchmarks/harvest.py --tokens 8192 --layer 15 --context-size 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _timing import command_line, markdown_table

from saekit.data.corpus import default_corpus_path, read_documents, tokenize
from saekit.data.harvest import harvest
from saekit.data.model import capture, load_model


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs of fn() after one warm-up run (best, not mean:
    the machine is shared and slowdowns only come from neighbours)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=16_384, help="tokens run through the model per timed pass")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-contexts", type=int, default=8)
    parser.add_argument("--dtype", default=None, help="model dtype (default: bf16 where the CPU has it)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    loaded = load_model(args.model, dtype=args.dtype)
    hook = f"layers.{args.layer}.resid_post"
    n_contexts = max(1, args.tokens // args.context_size)
    corpus = tokenize(
        read_documents(default_corpus_path()), loaded.tokenizer, args.context_size, max_contexts=n_contexts
    )
    tokens = corpus.tokens.numel()
    batches = corpus.tokens.split(args.batch_contexts)

    def naive() -> None:
        with torch.no_grad():
            for ids in batches:
                loaded.model(ids, output_hidden_states=True).hidden_states[args.layer + 1].clone()

    def saekit_capture() -> None:
        for ids in batches:
            capture(loaded, ids, hook)

    with tempfile.TemporaryDirectory() as tmp:

        def saekit_harvest() -> None:
            harvest(
                loaded,
                corpus,
                hook,
                Path(tmp) / "store",
                batch_contexts=args.batch_contexts,
                overwrite=True,
                progress=False,
            )

        seconds = {
            "naive: full forward, output_hidden_states=True": timed(naive, args.repeats),
            f"saekit capture (stops after layer {args.layer})": timed(saekit_capture, args.repeats),
            "saekit harvest → store on disk": timed(saekit_harvest, args.repeats),
        }
        store_dir = Path(tmp) / "store"
        on_disk = sum(f.stat().st_size for f in store_dir.iterdir())
        shards = sum(f.stat().st_size for f in store_dir.glob("shard-*"))
    stored = corpus.n_tokens
    naive_rate = tokens / seconds["naive: full forward, output_hidden_states=True"]
    rows = []
    for name, s in seconds.items():
        rows.append(
            {
                "method": name,
                "seconds": f"{s:.2f}",
                "tokens/s": tokens / s,
                "× naive": f"{tokens / s / naive_rate:.1f}",
                "stored rows/s": stored / s if "harvest" in name else None,
            }
        )
    load_after = os.getloadavg()[0]

    print(f"# {command_line()}")
    print(
        f"# model {loaded.name} ({loaded.n_layers} layers, d_model {loaded.d_model}), "
        f"{str(loaded.dtype).removeprefix('torch.')}, "
        f"hook {hook}; {len(corpus)} contexts × {args.context_size} = {tokens} tokens, {args.batch_contexts} contexts "
        f"a forward; {torch.get_num_threads()} threads; load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print()
    print(markdown_table(rows, ["method", "seconds", "tokens/s", "× naive", "stored rows/s"]))
    print()
    target = 2 * loaded.d_model + 12
    print(
        f"bytes on disk per stored token: {on_disk / stored:.1f} (shards only {shards / stored:.1f}; "
        f"target 2·d_in + 12 = {target}: {100 * (shards / stored / target - 1):+.2f}%)"
    )


if __name__ == "__main__":
    main()
