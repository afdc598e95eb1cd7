"""PNG figures of an SAE's features and metrics (matplotlib, object API: no pyplot state,
no display needed).

    feature_density           histogram of log10 firing frequency (dead features counted apart)
    l0_histogram              distribution over tokens of L0, the number of active features
    loss_comparison           CE clean / with the SAE / mean- and zero-ablated, loss recovered
    frequency_vs_activation   each feature's firing frequency against its mean activation
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runtime.atomic import atomic_path
from ..interpret.stats import FeatureStats

ACCENT = "#d9480f"
INK = "#1d2330"
SIZE = (5.6, 3.4)


def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=110, layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def feature_density(frequency: torch.Tensor, path: str | Path) -> Path:
    """Histogram of log10(frequency) over the features that fired; dead ones in the title."""
    figure, axes = _figure()
    frequency = frequency.double().numpy()
    live = frequency[frequency > 0]
    if live.size:
        axes.hist(np.log10(live), bins=min(60, max(10, live.size // 20)), color=ACCENT, alpha=0.8)
    axes.set_xlabel("log10 firing frequency")
    axes.set_ylabel("features")
    dead = int((frequency == 0).sum())
    axes.set_title(
        f"Feature density · {live.size:,} live, {dead:,} dead ({dead / max(frequency.size, 1):.1%})", fontsize=10
    )
    return _save(figure, Path(path))


def l0_histogram(l0_counts: torch.Tensor, path: str | Path) -> Path:
    """Bar chart of how many tokens had each L0 (active features per token), mean marked."""
    figure, axes = _figure()
    counts = l0_counts.double().numpy()
    used = np.nonzero(counts)[0]
    last = int(used.max()) if used.size else 1
    l0 = np.arange(last + 1)
    axes.bar(l0, counts[: last + 1], width=1.0, color=ACCENT, alpha=0.8)
    total = counts.sum()
    mean = float((np.arange(len(counts)) * counts).sum() / total) if total else float("nan")
    if math.isfinite(mean):
        axes.axvline(mean, color=INK, linewidth=1, linestyle="--")
    axes.set_xlabel("L0 (active features per token)")
    axes.set_ylabel("tokens")
    axes.set_title(f"L0 distribution · mean {mean:.1f} over {int(total):,} tokens", fontsize=10)
    return _save(figure, Path(path))


def loss_comparison(metrics: dict[str, Any], path: str | Path) -> Path:
    """Next-token cross-entropy under each intervention at the hook point."""
    figure, axes = _figure()
    names = [
        ("ce_clean", "clean"),
        ("ce_sae", "SAE spliced in"),
        ("ce_mean_ablation", "mean-ablated"),
        ("ce_zero_ablation", "zero-ablated"),
    ]
    present = [(label, float(metrics[key])) for key, label in names if metrics.get(key) is not None]
    labels = [label for label, _ in present]
    values = [value for _, value in present]
    colours = ["#868e96", ACCENT, "#adb5bd", "#495057"][: len(values)]
    bars = axes.barh(labels[::-1], values[::-1], color=colours[::-1])
    for bar, value in zip(bars, values[::-1]):
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.3f}", va="center", fontsize=9)
    axes.set_xlabel("cross-entropy (nats per token)")
    axes.set_xlim(0, max(values, default=1) * 1.18)
    recovered = metrics.get("loss_recovered")
    title = "Next-token loss at the hook"
    if recovered is not None:
        title += f" · loss recovered {recovered:.3f}"
    axes.set_title(title, fontsize=10)
    return _save(figure, Path(path))


def frequency_vs_activation(stats: FeatureStats, path: str | Path) -> Path:
    """Scatter of log10 firing frequency against log10 mean activation, live features only."""
    figure, axes = _figure()
    frequency = stats.frequency.numpy()
    mean = stats.mean_activation.numpy()
    live = frequency > 0
    axes.scatter(
        np.log10(frequency[live]), np.log10(np.maximum(mean[live], 1e-12)), s=4, alpha=0.4, color=ACCENT, linewidths=0
    )
    axes.set_xlabel("log10 firing frequency")
    axes.set_ylabel("log10 mean activation when firing")
    axes.set_title("Features: how often against how strongly", fontsize=10)
    return _save(figure, Path(path))


def write_plots(out_dir: str | Path, stats: FeatureStats, metrics: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """Every figure into ``out_dir``: [(caption, path)], in the order a reader wants them."""
    out_dir = Path(out_dir)
    plots = [
        (
            "Feature density: firing frequency of each feature",
            feature_density(stats.frequency, out_dir / "feature_density.png"),
        ),
        ("L0: active features per token", l0_histogram(stats.l0_counts, out_dir / "l0_histogram.png")),
    ]
    if metrics and metrics.get("ce_clean") is not None:
        plots.append(
            (
                "Cross-entropy with the SAE spliced in, against the clean model and ablations",
                loss_comparison(metrics, out_dir / "loss_comparison.png"),
            )
        )
    plots.append(
        (
            "Firing frequency against mean activation",
            frequency_vs_activation(stats, out_dir / "frequency_vs_activation.png"),
        )
    )
    return plots
