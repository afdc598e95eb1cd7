"""Quality reached in a fixed wall-clock budget: explained variance and L0 on held-out
activations, saekit against SAELens, every architecture, same data, same budget.

Speed that costs quality is no speed: this trains each architecture for ``--seconds``
of wall time through saekit's trainer and through SAELens's ``SAETrainer.step``
(d_in = 576, d_sae = 9216, 4096 tokens a step unless changed), then evaluates both SAEs
with the same code (FVU about the mean, L0) on held-out activations neither saw.

The activations are ``peers.activations``: sparse non-negative sums of 4·d_in fixed
directions (≈ 16 active per token) plus a mean offset and noise, so an SAE has real
structure to find. Sparsity is matched where the architecture allows: topk/batchtopk at
k = 32 in both libraries, the rows that compare like with like. saekit's penalised
architectures train to ``target_l0 = 32`` and SAELens's take its coefficient
(``--saelens-coefficient``; it has no L0 target); within a budget of a minute or two
neither gets near L0 32 from a cold start, so read those rows for speed of descent only.

    .venv-bench/bin/python benchmarks/quality_per_time.py                 # 5 archs × 2 libraries × 60 s
    .venv-bench/bin/python benchmarks/quality_per_time.py --seconds 30 --only topk

On real activations, give a store (``saekit harvest`` writes one): ``--store PATH`` hands
the run to quality_matched_tokens.py's equal-wall-time mode (``--seconds``), which trains
every library that has the architecture (sparsify too, for TopK) on the store's rows and
judges them with one evaluator, spliced KL and ΔCE included. ``--only`` then matches
ARCH/LIBRARY, and every option of that benchmark passes through (``--setting`` defaults
to ``defaults``, each library as its users run it):

    .venv-bench/bin/python benchmarks/quality_per_time.py --store runs/demo/store --seconds 60 \
        --only '^batchtopk/' --seeds 0 --splice-tokens 4096
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402
from peers import BenchConfig, _library_version, activations, saelens  # noqa: E402

ARCHS = ("relu", "gated", "jumprelu", "topk", "batchtopk")
SAELENS_ARCH = {"relu": "standard"}


def train_and_heldout(cfg: BenchConfig, tokens: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(training batches, held-out rows) cut from one draw of ``peers.activations``, so
    both share the same directions and the same mean offset; no step reads the held-out rows."""
    extra = -(-tokens // cfg.batch)
    x = activations(dataclasses.replace(cfg, n_batches=cfg.n_batches + extra))
    train = x[: cfg.n_batches * cfg.batch]
    return list(train.split(cfg.batch)), x[cfg.n_batches * cfg.batch :][:tokens]


@torch.no_grad()
def quality(encode, decode, x: torch.Tensor) -> dict[str, float]:
    """L0 and explained variance (1 − Σ‖x − x̂‖² / Σ‖x − μ‖²), in float64."""
    l0, err = 0.0, 0.0
    for chunk in x.split(4096):
        f = encode(chunk).float()
        x_hat = decode(f).float()
        l0 += float((f > 0).sum())
        err += float((chunk - x_hat).double().pow(2).sum())
    total = float((x.double() - x.double().mean(0)).pow(2).sum())
    return {"l0": l0 / x.shape[0], "explained_variance": 1 - err / total}


def run_for(step, batches: list[torch.Tensor], seconds: float) -> int:
    """Call step(batch) until ``seconds`` of wall time have passed; return the steps made."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(batches[n % len(batches)])
        n += 1
    return n


def train_saekit(arch: str, cfg: BenchConfig, batches, seconds: float, target_l0: float):
    import saekit
    from saekit.training.trainer import Trainer

    options = {"k": cfg.k} if arch in ("topk", "batchtopk") else {"target_l0": target_l0}
    sae = saekit.create(arch, d_in=cfg.d_in, d_sae=cfg.d_sae, seed=cfg.seed, **options)
    # A step count is unknown in advance here, so no schedule depends on it: constant
    # learning rate, no warm-ups (the L0 controller acts from the first step).
    trainer = Trainer(
        sae,
        torch.cat(batches[:1]),
        steps=10**9,
        batch_size=cfg.batch,
        lr=4e-4,
        lr_warmup_fraction=0,
        lr_decay="none",
        sparsity_warmup_fraction=0,
        progress=False,
        normalization_tokens=cfg.batch,
        log_every=10**9,
        device="cpu",
    )
    steps = run_for(trainer.step, batches, seconds)
    sae.fold_activation_scale(trainer.scale)
    sae.eval()
    return steps, sae.encode, sae.decode


def train_saelens(arch: str, cfg: BenchConfig, batches, seconds: float, coefficient: float | None):
    step = saelens(SAELENS_ARCH.get(arch, arch), autocast=True)(cfg)
    trainer = step.__self__
    if coefficient is not None and hasattr(trainer.sae.cfg, "l1_coefficient"):
        trainer.sae.cfg.l1_coefficient = coefficient
    steps = run_for(step, batches, seconds)
    sae = trainer.sae
    sae.eval()
    return steps, sae.encode, sae.decode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock training budget per row")
    parser.add_argument("--only", default="", help="regular expression on architecture names")
    parser.add_argument("--target-l0", type=float, default=32.0, help="saekit relu/gated/jumprelu: target L0")
    parser.add_argument(
        "--saelens-coefficient",
        type=float,
        default=None,
        help="SAELens relu/gated: its l1_coefficient (default: its own default)",
    )
    parser.add_argument("--heldout-tokens", type=int, default=16_384)
    parser.add_argument("--no-peers", action="store_true", help="saekit's rows only")
    parser.add_argument(
        "--store", type=Path, action="append", default=[],
        help="real activations (repeatable): run quality_matched_tokens.py --seconds on them; "
        "its other options pass through",
    )  # fmt: skip
    args, passed_on = parser.parse_known_args(argv)
    if args.store:
        import quality_matched_tokens

        if args.saelens_coefficient is not None or args.no_peers:
            parser.error("with --store, give coefficients as --coefficients saelens/ARCH=C and rows with --only")
        forwarded = [x for store in args.store for x in ("--store", str(store))]
        forwarded += ["--seconds", f"{args.seconds:g}", "--only", args.only, "--target-l0", f"{args.target_l0:g}"]
        if not any(a == "--setting" or a.startswith("--setting=") for a in passed_on):
            forwarded += ["--setting", "defaults"]
        quality_matched_tokens.main(forwarded + passed_on)
        return
    if passed_on:
        parser.error(f"unrecognized arguments: {' '.join(passed_on)} (they belong with --store)")

    cfg = BenchConfig(n_batches=16)
    torch.manual_seed(cfg.seed)
    batches, test = train_and_heldout(cfg, args.heldout_tokens)
    rows = []
    for arch in [a for a in ARCHS if re.search(args.only, a)]:
        libraries = [("saekit", train_saekit, args.target_l0)]
        if not args.no_peers:
            libraries.append(("sae-lens", train_saelens, args.saelens_coefficient))
        for library, train, option in libraries:
            print(f"training {library} {arch} for {args.seconds:.0f} s ...", file=sys.stderr, flush=True)
            torch.manual_seed(cfg.seed)
            try:
                steps, encode, decode = train(arch, cfg, batches, args.seconds, option)
            except ImportError as error:
                rows.append({"library": library, "arch": arch, "note": f"not installed ({error.name})"})
                continue
            rows.append(
                {
                    "library": f"{library} {_library_version(library)}",
                    "arch": arch,
                    "steps": steps,
                    "tokens": steps * cfg.batch,
                    **quality(encode, decode, test),
                }
            )
    print(
        f"d_in {cfg.d_in}, d_sae {cfg.d_sae}, batch {cfg.batch}, {args.seconds:.0f} s of training per row, "
        f"held-out {test.shape[0]} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    table_rows = [
        {
            **r,
            "explained variance": None if "explained_variance" not in r else f"{r['explained_variance']:.4f}",
            "L0": None if "l0" not in r else f"{r['l0']:.1f}",
        }
        for r in rows
    ]
    print(markdown_table(table_rows, ["arch", "library", "steps", "tokens", "L0", "explained variance", "note"]))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
