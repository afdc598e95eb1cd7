"""How well every architecture recovers a known dictionary, on the named toy settings of
saekit.data.synthetic (TOY_SETTINGS): the fraction of true directions some decoder row
matches at cosine > 0.9, the MMCS, L0, FVU and dead fraction on held-out samples, and on
hierarchical data the absorption (the share of a child's occurrences on which the latent
of its parent stays silent; lower is better).

    .venv/bin/python benchmarks/toy_recovery.py                       # every setting, every architecture
    .venv/bin/python benchmarks/toy_recovery.py --settings hierarchy --seeds 0 1 2
    .venv/bin/python benchmarks/toy_recovery.py --default-groups   # Matryoshka with its default groups too

Matryoshka runs with saekit.evaluation.toy.toy_options: two halves, and on "hierarchy" a
first group of 32 latents (toy.py says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from saekit.data.synthetic import TOY_SETTINGS
from saekit.evaluation.toy import toy_recovery
from saekit.sae.registry import ARCHITECTURES

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(TOY_SETTINGS), choices=list(TOY_SETTINGS))
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--default-groups", action="store_true", help="also run Matryoshka with its default groups (not toy_options)"
    )
    parser.add_argument("--lr", default=None, help='learning rate in place of the setting\'s: a number or "auto"')
    args = parser.parse_args()
    lr = args.lr if args.lr in (None, "auto") else float(args.lr)
    torch.set_num_threads(2)
    rows = []

    def show(row: dict) -> None:
        print("  ", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    for name in args.settings:
        print(f"{name}: {TOY_SETTINGS[name].description}", flush=True)
        for arch in args.archs:
            for seed in args.seeds:
                rows.append(toy_recovery(name, arch, seed, lr=lr))
                show(rows[-1])
                if arch == "matryoshka_batchtopk" and args.default_groups:
                    rows.append({**toy_recovery(name, arch, seed, {}, lr=lr), "arch": f"{arch} (default groups)"})
                    show(rows[-1])
    columns = ["setting", "arch", "seed", "fraction_recovered", "mmcs", "l0", "target", "fvu", "dead", "gamma"]
    if any("absorption" in row for row in rows):
        columns += ["absorption", "parent_cosine"]
    print()
    print(markdown_table(rows, columns + ["seconds"], floatfmt=".3f"))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
