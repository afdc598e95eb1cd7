"""Training-step throughput of saekit, every architecture, beside its peers in one run.

A row is one full step of saekit's own trainer (``saekit.training.trainer.Trainer.step``: activation
scaling, autocast, the architecture's loss, backward, decoder-gradient projection,
gradient clipping, Adam, decoder renormalisation, firing statistics, the target-L0
controller where it applies) at d_in = 576, d_sae = 9216, B = 4096 tokens, measured
exactly as ``peers.py`` measures SAELens, EleutherAI sparsify, dictionary_learning and a
plain-PyTorch ReLU SAE: each configuration in a fresh process, median of the timed steps,
peak resident memory of the step. The peers run in the same invocation, so the ratios
are read from one run on one machine.

    .venv-bench/bin/python benchmarks/train_throughput.py              # ours + every peer (≈ 15 min)
    .venv-bench/bin/python benchmarks/train_throughput.py --no-peers   # ours only
    .venv/bin/python benchmarks/train_throughput.py --no-peers --only 'topk'

The second table reads each saekit row against the fastest peer row that trains the
same architecture (each peer in its best configuration: bf16 autocast, sparse decoder,
its default optimiser, whichever is fastest).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402
from peers import (  # noqa: E402
    MATRYOSHKA_FRACTIONS,
    PEERS,
    BenchConfig,
    _least_disturbed,
    _library_version,
    _table,
    activations,
    firing_quantile,
    print_peak_and_header,
    transcoder_target,
)

ARCHS = (
    "relu",
    "gated",
    "jumprelu",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
    "topk_transcoder",
    "topk_skip_transcoder",
)
PRECISIONS = ("bfloat16", "float32")

# Which peer rows train the same thing as a saekit architecture.
PEER_ROWS = {  # a row's name, then its variant (+bf16, +sparse, ...) or nothing: topk is not topk_transcoder
    "relu": r"^(saelens/standard|dictionary_learning/standard(_april)?|plain/relu)(\+|$)",
    "gated": r"^(saelens/gated|dictionary_learning/gated)(\+|$)",
    "jumprelu": r"^(saelens/jumprelu|dictionary_learning/jumprelu)(\+|$)",
    "topk": r"^(saelens/topk|sparsify/topk|dictionary_learning/topk)(\+|$)",
    "batchtopk": r"^(saelens/batchtopk|dictionary_learning/batchtopk)(\+|$)",
    "matryoshka_batchtopk": r"^(saelens/matryoshka_batchtopk|dictionary_learning/matryoshka_batchtopk)(\+|$)",
    "topk_transcoder": r"^sparsify/topk_transcoder(\+|$)",
    "topk_skip_transcoder": r"^sparsify/topk_skip_transcoder(\+|$)",
}

SAE_OPTIONS = {  # coefficients as the peers' defaults set them; they do not change the work done
    "relu": {"l1_coefficient": 5.0},
    "gated": {"l1_coefficient": 5.0},
    "jumprelu": {"l0_coefficient": 1.0},
    "topk": {},
    "batchtopk": {},
    "matryoshka_batchtopk": {"group_fractions": list(MATRYOSHKA_FRACTIONS)},
    "topk_transcoder": {"transcoder": True},
    "topk_skip_transcoder": {"transcoder": "skip"},
}
BASE_ARCH = {"topk_transcoder": "topk", "topk_skip_transcoder": "topk"}
"""A row that is not an architecture's name: the architecture it trains."""


def build_saekit(
    cfg: BenchConfig, *, arch: str, precision: str = "bfloat16", device: str = "cpu", sparse_below: float | None = None
):
    """saekit's Trainer for ``arch`` on ``device``; returns its ``step(x)``. ``sparse_below``
    overrides the SAE's (0: dense path only, above 1: sparse path only).

    The trainer estimates the activation scale and b_dec from one batch (made here, then
    dropped) before the first step, as it does on real data."""
    import saekit
    from saekit.data.pairs import Pair
    from saekit.sae.registry import uses_k
    from saekit.training.trainer import Trainer

    options = dict(SAE_OPTIONS[arch])
    arch = BASE_ARCH.get(arch, arch)
    if uses_k(arch):
        options["k"] = cfg.k
    sae = saekit.create(arch, d_in=cfg.d_in, d_sae=cfg.d_sae, seed=cfg.seed, **options)
    if sparse_below is not None:
        sae.sparse_below = sparse_below
    sample = activations(dataclasses.replace(cfg, n_batches=1))
    transcoder = bool(sae.cfg.transcoder)
    trainer = Trainer(
        sae,
        (sample, transcoder_target(sample)) if transcoder else sample,
        steps=10**9,
        batch_size=cfg.batch,
        precision=precision,
        progress=False,
        normalization_tokens=cfg.batch,
        log_every=10**9,
        device=device,
    )
    trainer.source = None  # the timed steps are fed by the benchmark
    if cfg.l0 is not None and arch in FIRING_PARAMETER:
        set_l0(sae, sample.to(device) * trainer.scale, cfg.l0)
    del sample
    gc.collect()
    if transcoder:  # the pair is made in the step, as sparsify's row makes its target
        return lambda x: trainer.step(Pair(x, transcoder_target(x)))
    return trainer.step


FIRING_PARAMETER = {"relu": "b_enc", "gated": "b_gate", "jumprelu": "threshold"}
"""The parameter that decides whether a feature fires, for BenchConfig.l0 (topk and
batchtopk fire k per token by construction)."""


@torch.no_grad()
def set_l0(sae, x, l0: float) -> None:
    """Shift the firing parameter so that about l0 features fire per token on x."""
    name = FIRING_PARAMETER[sae.arch]
    current = getattr(sae, name)
    gate = sae.projection(x) + sae.b_gate if sae.arch == "gated" else sae.pre_activations(x)
    quantile = firing_quantile(gate, l0)
    if name == "threshold":
        current.copy_(quantile.clamp_min(0))
    else:
        current -= quantile


def saekit_row(arch: str, precision: str) -> str:
    return f"saekit/{arch}" + ("+bf16" if precision == "bfloat16" else "")


def run_saekit(arch: str, precision: str, cfg: BenchConfig, retries: int, max_stall: float) -> dict:
    result = _least_disturbed(
        saekit_row(arch, precision),
        cfg,
        retries,
        max_stall,
        target="train_throughput:build_saekit",
        build_kwargs={"arch": arch, "precision": precision},
        dtype="bf16" if precision == "bfloat16" else "fp32",
    )
    return {**result, "version": _library_version("saekit")}


def ratio_table(ours: list[dict], peers: list[dict]) -> str:
    rows = []
    for r in ours:
        if "error" in r:
            continue
        arch = r["name"].split("/")[1].split("+")[0]
        pattern = re.compile(PEER_ROWS[arch])
        rivals = [p for p in peers if pattern.search(p["name"]) and "error" not in p]
        best = max(rivals, key=lambda p: p["tokens_per_s"], default=None)
        rows.append(
            {
                "saekit": r["name"],
                "tokens/s": r["tokens_per_s"],
                "fastest peer": best["name"] if best else "(none measured)",
                "peer tokens/s": best["tokens_per_s"] if best else None,
                "speed-up": f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}×" if best else None,
                "peak MiB": r["peak_mb"],
                "peer peak MiB": best["peak_mb"] if best else None,
            }
        )
    return markdown_table(
        rows, ["saekit", "tokens/s", "fastest peer", "peer tokens/s", "speed-up", "peak MiB", "peer peak MiB"]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="regular expression on row names (ours and the peers')")
    parser.add_argument("--no-peers", action="store_true", help="time saekit's rows only")
    parser.add_argument("--precision", choices=PRECISIONS, nargs="+", default=list(PRECISIONS))
    parser.add_argument("--warmup", type=int, default=BenchConfig.warmup)
    parser.add_argument("--steps", type=int, default=BenchConfig.steps)
    parser.add_argument("--k", type=int, default=BenchConfig.k)
    parser.add_argument("--l0", type=float, default=None, help="see BenchConfig.l0 in peers.py")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--max-stall", type=float, default=0.15)
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args(argv)

    from matmul_peak import measure_matmuls

    cfg = BenchConfig(warmup=args.warmup, steps=args.steps, k=args.k, l0=args.l0)
    load_before = os.getloadavg()[0]
    matmuls = None if args.no_peak else measure_matmuls()

    ours, peers = [], []
    for arch in ARCHS:
        for precision in args.precision:
            name = saekit_row(arch, precision)
            if not re.search(args.only, name):
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                ours.append(run_saekit(arch, precision, cfg, args.retries, args.max_stall))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                ours.append({"name": name, "error": str(error)})
                print(error, file=sys.stderr)
    if not args.no_peers:
        for name in [n for n in PEERS if re.search(args.only, n)]:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                peers.append(_least_disturbed(name, cfg, args.retries, args.max_stall))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                peers.append({"name": name, "version": _library_version(PEERS[name].library), "error": str(error)})
                print(error, file=sys.stderr)
    load = os.getloadavg()[0]

    peak = print_peak_and_header(cfg, matmuls, load_before, load)
    print(_table(ours + peers, peak))
    if peers:
        print()
        print(ratio_table(ours, peers))
    print(f"\n`{command_line()}`")
    if args.json:
        args.json.write_text(
            json.dumps({"config": dataclasses.asdict(cfg), "peak": peak, "saekit": ours, "peers": peers}, indent=2)
        )


if __name__ == "__main__":
    main()
