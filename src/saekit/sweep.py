"""Several architectures × sparsity levels on the same stored activations, each evaluated
inside the model on the same held-out text, compared in a table and Pareto plots.

This is the experiment behind the papers' claims (gated and JumpReLU SAEs reconstruct
better than ReLU ones at equal L0; ReLU SAEs shrink, γ < 1), run on the user's own model
and corpus. Under torchrun the SAEs are spread round-robin over the ranks.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .atomic import atomic_write_json, atomic_write_text
from .config import RunConfig
from .distributed import DistContext
from .pipeline import Run, say

COLUMNS = ("arch", "target", "l0", "fvu", "explained_variance", "loss_recovered", "ce_clean", "ce_sae", "ce_zero_ablation",
           "relative_reconstruction_bias", "dead_fraction")


def sweep(run_folder: Path, *, archs: list[str], l0s: list[float], steps: int | None = None, out: Path | None = None) -> list[dict]:
    from .data.store import open_store
    from .sae import create
    from .sae.persistence import load_sae
    from .splice_eval import evaluate_in_model, write_metrics
    from .train import train

    base = Run(run_folder, RunConfig.from_file(run_folder / "config.json"))
    if not base.done("harvest"):
        raise FileNotFoundError(f"{run_folder} has no finished activation store; run `saekit run` (or the demo) first.")
    out = out or run_folder / "sweep"
    store = open_store(base.store_path)
    ctx = DistContext.current()
    train_cfg = replace(base.config.train, steps=steps or base.config.train.steps)
    jobs = [(arch, l0) for arch in archs for l0 in l0s]
    for index, (arch, l0) in enumerate(jobs):
        if index % ctx.world_size != ctx.rank:
            continue
        folder = out / f"{arch}-L0_{l0:g}"
        sae_path, metrics_path = folder / "sae", folder / "metrics.json"
        if not sae_path.exists():
            say(f"sweep: training {arch} at L0 {l0:g} ({index + 1}/{len(jobs)})")
            section = replace(base.config.sae, arch=arch, k=int(l0), target_l0=None if arch in ("topk", "batchtopk") else l0,
                              l1_coefficient=None, l0_coefficient=None)
            sae = create(arch, d_in=store.d_in, d_sae=section.width(store.d_in), seed=train_cfg.seed, **section.sae_options())
            sae.cfg.hook, sae.cfg.model = base.config.model.hook, base.config.model.name
            # ctx=DistContext(): this rank trains this SAE alone, whatever the process group.
            result = train(sae, store, out=folder / "train", ctx=DistContext(), **{**vars(train_cfg), "progress": True})
            result.sae.save(sae_path)
        if not metrics_path.exists():
            _, held_out = base.splits
            metrics = evaluate_in_model(load_sae(sae_path), base.model, held_out, max_tokens=base.config.evaluate.tokens,
                                        batch_contexts=base.config.evaluate.batch_contexts, progress=True)
            write_metrics(metrics_path, metrics)
    ctx.barrier()
    if not ctx.is_main:
        return []
    rows = []
    for arch, l0 in jobs:
        metrics = json.loads((out / f"{arch}-L0_{l0:g}" / "metrics.json").read_text())
        rows.append({"arch": arch, "target": l0, **{k: metrics.get(k) for k in COLUMNS if k not in ("arch", "target")}})
    atomic_write_json(out / "sweep.json", rows)
    table = markdown_table(rows)
    atomic_write_text(out / "sweep.md", table)
    print(table)
    plot_pareto(rows, out)
    say(f"sweep: table {out / 'sweep.md'}, plots {out / 'pareto_fvu.png'}, {out / 'pareto_loss_recovered.png'}")
    return rows


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return header + "".join("| " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |\n" for row in rows)


def plot_pareto(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    for metric, label, name in (("fvu", "fraction of variance unexplained (lower is better)", "pareto_fvu.png"),
                                ("loss_recovered", "loss recovered (higher is better)", "pareto_loss_recovered.png")):
        figure, axes = plt.subplots(figsize=(6, 4.2), dpi=120)
        for arch in dict.fromkeys(row["arch"] for row in rows):
            points = sorted((row["l0"], row[metric]) for row in rows if row["arch"] == arch and row.get(metric) is not None)
            if points:
                axes.plot(*zip(*points), marker="o", label=arch)
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))  # 16, 32, 64, not 1.6×10¹
        axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_xlabel("L0 (active features per token)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        tmp = out / f".{name}.tmp.png"
        figure.savefig(tmp)
        plt.close(figure)
        tmp.replace(out / name)
