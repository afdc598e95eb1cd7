"""Several architectures × sparsity levels on the same stored activations, each evaluated
inside the model on the same held-out text, compared in a table and Pareto plots.

This is the experiment behind the papers' claims (gated and JumpReLU SAEs reconstruct
better than ReLU ones at equal L0; ReLU SAEs shrink, γ < 1), run on the user's own model
and corpus. Every SAE is made by the same recipe as ``saekit train`` (app/recipes.py),
each in its own folder that follows saekit's folder contract, so a rerun with other
steps never reuses an SAE trained with the old ones. Under torchrun the SAEs are spread
round-robin over the ranks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .._runtime.atomic import atomic_write_json, atomic_write_text
from .._runtime.distributed import DistContext
from .._runtime.errors import UsageError
from .._runtime.folder import OutputFolder
from ..sae import registry
from .pipeline import open_run, say
from .recipes import OUTPUTS, identity, train_sae

COLUMNS = (
    "arch",
    "target",
    "l0",
    "fvu",
    "explained_variance",
    "loss_recovered",
    "ce_clean",
    "ce_sae",
    "ce_zero_ablation",
    "relative_reconstruction_bias",
    "dead_fraction",
)


def sweep(
    run_folder: Path,
    *,
    archs: list[str] | None = None,
    l0s: list[float],
    steps: int | None = None,
    out: Path | None = None,
    overwrite: bool = False,
) -> list[dict]:
    from ..data.store import open_store
    from ..evaluation.splice import evaluate_in_model, read_metrics, write_metrics
    from ..formats.saekit import load_sae

    archs = list(archs or registry.ARCHITECTURES)
    for arch in archs:
        registry.architecture(arch)
    if not l0s or any(l0 <= 0 for l0 in l0s):
        raise UsageError(f"--l0s must be positive numbers, got {l0s}.")
    base = open_run(run_folder, write=False)
    if not (base.store_path / "manifest.json").is_file():
        raise UsageError(f"{run_folder} has no finished activation store; run `saekit run` (or the demo) first.")
    out = out or run_folder / "sweep"
    store = open_store(base.store_path)
    ctx = DistContext.current()
    train_cfg = replace(base.config.train, steps=steps or base.config.train.steps, progress=True)
    jobs = [(arch, l0) for arch in archs for l0 in l0s]
    for index, (arch, l0) in enumerate(jobs):
        if index % ctx.world_size != ctx.rank:
            continue
        path = out / f"{arch}-L0_{l0:g}"
        by_k = registry.uses_k(arch)
        if by_k and l0 != int(l0):
            raise UsageError(f"{arch} needs a whole number of active features; --l0s has {l0:g}.")
        section = replace(
            base.config.sae,
            arch=arch,
            k=int(l0) if by_k else base.config.sae.k,
            target_l0=None if by_k else l0,
            l1_coefficient=None,
            l0_coefficient=None,
        )
        hook, model = base.config.model.hook, base.config.model.name
        with OutputFolder(
            path,
            kind="sweep-point",
            identity={
                **identity(section, train_cfg, store.fingerprint(), d_in=store.d_in, hook=hook, model=model),
                "evaluate": vars(base.config.evaluate),
            },
            owns=(*OUTPUTS, "metrics.json"),
            overwrite=overwrite,
            flag="--out",
        ) as folder:
            if not folder.has("sae"):
                say(f"sweep: training {arch} at L0 {l0:g} ({index + 1}/{len(jobs)})")
            # ctx=DistContext(): this rank trains this SAE alone, whatever the process group.
            train_sae(
                path, folder, section, train_cfg, store, d_in=store.d_in, hook=hook, model=model, ctx=DistContext()
            )
            if not folder.has("metrics.json"):
                _, held_out = base.splits
                metrics = evaluate_in_model(
                    load_sae(path / "sae"),
                    base.model,
                    held_out,
                    max_tokens=base.config.evaluate.tokens,
                    batch_contexts=base.config.evaluate.batch_contexts,
                    progress=True,
                )
                write_metrics(folder.output("metrics.json"), metrics)
                folder.finished("metrics.json")
    ctx.barrier()
    if not ctx.is_main:
        return []
    rows = []
    for arch, l0 in jobs:
        metrics = read_metrics(out / f"{arch}-L0_{l0:g}" / "metrics.json")
        rows.append({"arch": arch, "target": l0, **{k: metrics.get(k) for k in COLUMNS if k not in ("arch", "target")}})
    with OutputFolder(
        out,
        kind="sweep",
        identity={"run": str(Path(run_folder).resolve())},
        owns=("sweep.json", "sweep.md", "pareto_fvu.png", "pareto_loss_recovered.png"),
    ) as folder:
        atomic_write_json(folder.output("sweep.json"), rows)
        table = markdown_table(rows)
        atomic_write_text(folder.output("sweep.md"), table)
        print(table)
        plot_pareto(rows, out, folder)
        folder.finished("sweep.json", "sweep.md")
    say(f"sweep: table {out / 'sweep.md'}, plots {out / 'pareto_fvu.png'}, {out / 'pareto_loss_recovered.png'}")
    return rows


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return header + "".join("| " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |\n" for row in rows)


def plot_pareto(rows: list[dict], out: Path, folder: OutputFolder) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    for metric, label, name in (
        ("fvu", "fraction of variance unexplained (lower is better)", "pareto_fvu.png"),
        ("loss_recovered", "loss recovered (higher is better)", "pareto_loss_recovered.png"),
    ):
        figure, axes = plt.subplots(figsize=(6, 4.2), dpi=120)
        for arch in dict.fromkeys(row["arch"] for row in rows):
            points = sorted(
                (row["l0"], row[metric]) for row in rows if row["arch"] == arch and row.get(metric) is not None
            )
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
        folder.output(name)
        tmp = out / f".{name}.tmp.png"
        figure.savefig(tmp)
        plt.close(figure)
        tmp.replace(out / name)
        folder.finished(name)
