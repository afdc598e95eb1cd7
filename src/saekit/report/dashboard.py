"""The HTML dashboard: a folder that opens from the file system, no server, no network.

    index.html              overview: metrics, plots, a searchable table of every feature
    feature.html#ID         one feature: statistics, explanation and scores, histograms of
                            activations and logit weights, logit effects, co-firing and
                            decoder neighbours, top contexts and quantile groups, steering
    data/shard-NNNN.js      feature data, SHARD_SIZE features a file, loaded on demand
    plots/*.png             matplotlib figures (report/plots.py)
    assets/                 style.css, index.js, feature.js

Pages are Jinja2 templates with autoescaping; data reaches the pages as JSON through
Jinja's ``tojson`` (which escapes <, >, & and '), and the scripts put text into the DOM
with ``textContent`` only, so corpus text is always shown as text. A Content-Security-
Policy allows only the dashboard's own script files to run.
"""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .._runtime.atomic import atomic_write_text
from ..evaluation.splice import format_value, table_rows
from ..interpret.stats import FeatureStats
from ..sae.base import SparseAutoencoder
from .extras import FeatureExtras, gather_extras, run_folder_of
from .groups import quantile_at, quantile_groups
from .plots import write_plots

SHARD_SIZE = 64
ASSETS = ("style.css", "index.js", "feature.js")
INDEX_TOKENS = 6
LABEL_CHARS = 80


def write_report(
    out_dir: str | Path,
    sae: SparseAutoencoder,
    stats: FeatureStats,
    metrics: dict[str, Any] | None = None,
    tokenizer: Any = None,
    *,
    n_features: int | None = None,
    title: str | None = None,
    shard_size: int = SHARD_SIZE,
    run: str | Path | None = None,
    loaded: Any = None,
    extras: FeatureExtras | None = None,
) -> Path:
    """Write the dashboard into ``out_dir`` and return the path of its index.html.

    ``metrics``: what ``evaluate_in_model`` returned (or metrics.json read back), shown
    on the overview; ``tokenizer`` turns token ids into text (``decode``), without one
    tokens show as ⟨id⟩; ``n_features`` shows only features 0 … n_features − 1.
    index.html is written last, so a report folder with one is complete.

    The optional parts (report/extras.py) come from ``extras`` when given, else are
    gathered here: explanations, steering and co-firing from the run folder ``run`` (by
    default the folder above ``out_dir`` when that holds a run: RUN/report), the
    logit-weight histograms from ``loaded`` (the LoadedModel), decoder neighbours always.
    """
    if stats.d_sae != sae.d_sae:
        raise ValueError(
            f"the statistics are of an SAE with {stats.d_sae} features, but this SAE has {sae.d_sae}; "
            "collect them again for this SAE."
        )
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}.")
    n_shown = stats.d_sae if n_features is None else max(1, min(int(n_features), stats.d_sae))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _environment()
    text = TokenText(tokenizer)
    if extras is None:
        folder = Path(run) if run is not None else run_folder_of(out_dir)
        extras = gather_extras(sae, range(n_shown), run=folder, loaded=loaded, hook=stats.meta.get("hook"))
    run_info = _run_info(sae, stats, metrics)

    plots = [
        {"caption": caption, "src": f"plots/{path.name}"}
        for caption, path in write_plots(out_dir / "plots", stats, metrics)
    ]
    (out_dir / "assets").mkdir(exist_ok=True)
    for name in ASSETS:
        with resources.as_file(resources.files(__package__) / "templates" / name) as source:
            shutil.copyfile(source, out_dir / "assets" / name)

    shard_template = env.get_template("shard.js.j2")
    for index, begin in enumerate(range(0, n_shown, shard_size)):
        end = min(begin + shard_size, n_shown)
        data = _shard(stats, range(begin, end), text, extras)
        atomic_write_text(
            out_dir / "data" / f"shard-{index:04d}.js",
            shard_template.render(index=index, first=begin, last=end - 1, data=data),
        )

    config = {
        "shard_size": shard_size,
        "n_shown": n_shown,
        "n_tokens": stats.n_tokens,
        "before": stats.top.before,
        "hist_edges": [float(x) for x in stats.hist_edges],
        "co_firing_tokens": extras.co_firing.n_tokens if extras.co_firing is not None else None,
        "steering": _steering_config(extras),
    }
    atomic_write_text(out_dir / "feature.html", env.get_template("feature.html.j2").render(run=run_info, config=config))
    index_html = env.get_template("index.html.j2").render(
        run=run_info,
        title=title or f"SAE on {run_info['model']} at {run_info['hook']}",
        cards=_cards(metrics, stats),
        metric_rows=table_rows(metrics) if metrics else [],
        about=_about(sae, stats, n_shown),
        plots=plots,
        index=_index(stats, n_shown, text, extras),
        notes=extras.notes,
    )
    path = out_dir / "index.html"
    atomic_write_text(path, index_html)
    return path


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("saekit.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class TokenText:
    """Token id → the text it stands for (``tokenizer.decode([id])``), cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}
        self.special = set(getattr(tokenizer, "all_special_ids", None) or [])

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = f"⟨{token}⟩" if self.tokenizer is None else self.tokenizer.decode([token])
        return self.cache[token]


# ---- what the pages show --------------------------------------------------------------


def _shard(stats: FeatureStats, features: range, text: TokenText, extras: FeatureExtras) -> dict[str, Any]:
    """The data of a run of features: {"features": {id: {...}}, "vocab": {id: text},
    "special": [ids], "labels": {id: short label of a neighbour}}."""
    s = slice(features.start, features.stop)
    top = _examples(stats.top, s)
    random = _examples(stats.random, s)
    hist = stats.hist_counts[s].tolist()
    logits = stats.logits
    out: dict[str, Any] = {}
    used: set[int] = set()
    neighbours: set[int] = set()
    for j, feature in enumerate(features):
        randoms = [
            example + [_round(quantile_at(stats.hist_edges, stats.hist_counts[feature], example[0]))]
            for example in random[j]
        ]
        nonzero = [i for i, n in enumerate(hist[j]) if n]  # shown: the bins used, and one empty bin each side
        first, last = (max(0, nonzero[0] - 1), min(len(hist[j]), nonzero[-1] + 2)) if nonzero else (0, 0)
        entry = {
            "count": int(stats.count[feature]),
            "frequency": float(stats.frequency[feature]),
            "max": _round(float(stats.max_activation[feature])),
            "mean": _round(float(stats.mean_activation[feature])),
            "hist": [first, hist[j][first:last]],
            "top": top[j],
            "random": randoms,
            "groups": _groups(stats, feature, top[j], random[j]) if stats.count[feature] > 0 else [],
        }
        if logits is not None:
            entry["promoted"] = [
                [int(t), _round(float(v))] for t, v in zip(logits.promoted[feature], logits.promoted_values[feature])
            ]
            entry["suppressed"] = [
                [int(t), _round(float(v))]
                for t, v in zip(logits.suppressed[feature], logits.suppressed_values[feature])
            ]
            used.update(t for t, _ in entry["promoted"] + entry["suppressed"])
        entry.update(_extras_of(extras, feature))
        neighbours.update(n for n, *_ in entry.get("co_firing", []) + entry.get("decoder", []))
        for example in top[j] + random[j]:
            used.update(t for t in example[3] if t >= 0)
        out[str(feature)] = entry
    return {
        "features": out,
        "vocab": {str(t): text(t) for t in sorted(used)},
        "special": sorted(t for t in used if t in text.special),
        "labels": {str(n): _label(stats, n, text, extras) for n in sorted(neighbours)},
    }


def _groups(stats: FeatureStats, feature: int, top: list[list], random: list[list]) -> list[dict]:
    """Quantile groups (report/groups.py) of the feature's examples, as indices into
    top + random; a random example that is also a top one is counted once."""
    seen = {(example[1], example[2]) for example in top}
    pool = [(i, example[0]) for i, example in enumerate(top)]
    pool += [(len(top) + i, example[0]) for i, example in enumerate(random) if (example[1], example[2]) not in seen]
    pool = [(i, v) for i, v in pool if v is not None]
    return quantile_groups(pool, stats.hist_edges, stats.hist_counts[feature], float(stats.max_activation[feature]))


def _extras_of(extras: FeatureExtras, feature: int) -> dict[str, Any]:
    """The optional parts of one feature's entry (absent where not available)."""
    entry: dict[str, Any] = {}
    co, i = extras.co_firing, _row(extras.co_firing, feature)
    if i is not None:
        found = co.indices[i] >= 0
        entry["co_firing"] = [
            [int(n), _round(float(jaccard)), _round(float(ratio))]
            for n, jaccard, ratio in zip(co.indices[i][found], co.jaccard[i][found], co.ratio[i][found])
        ]
        entry["co_firing_count"] = int(co.fired[i])
    dec, i = extras.decoder, _row(extras.decoder, feature)
    if i is not None:
        entry["decoder"] = [[int(n), _round(float(c))] for n, c in zip(dec.indices[i], dec.cosine[i])]
    lh, i = extras.logit_histograms, _row(extras.logit_histograms, feature)
    if i is not None:
        entry["logit_hist"] = [_round(float(lh.low[i])), _round(float(lh.high[i])), lh.counts[i].tolist()]
    explanation = extras.explanations.get(feature)
    if explanation is not None:
        entry["explanation"] = {
            "text": explanation.explanation,
            "explainer": explanation.explainer,
            "detection": explanation.detection,
            "fuzzing": explanation.fuzzing,
            "n_detection": explanation.n_detection,
            "n_fuzzing": explanation.n_fuzzing,
        }
    if extras.steering is not None and feature in extras.steering.features:
        entry["steering"] = [[r["prompt"], r["strength"], r["text"]] for r in extras.steering.features[feature]]
    return entry


def _row(table: Any, feature: int) -> int | None:
    """The row of an extras table (with ``features`` [n]) that describes ``feature``."""
    if table is None:
        return None
    rows = (table.features == feature).nonzero()
    return int(rows[0, 0]) if len(rows) else None


def _steering_config(extras: FeatureExtras) -> dict[str, Any] | None:
    steering = extras.steering
    if steering is None:
        return None
    return {
        "hook": steering.hook,
        "prompts": steering.prompts,
        "unsteered": steering.unsteered,
        "strengths": steering.strengths,
        "max_new_tokens": steering.max_new_tokens,
    }


def _top_tokens(stats: FeatureStats, feature: int, text: TokenText) -> list[str]:
    """The distinct tokens of a feature's top examples, largest activation first."""
    tokens: list[str] = []
    centre = stats.top.before
    for ctx, window in zip(stats.top.context[feature].tolist(), stats.top.tokens[feature, :, centre].tolist()):
        if ctx >= 0 and text(window) not in tokens:
            tokens.append(text(window))
    return tokens[:INDEX_TOKENS]


def _label(stats: FeatureStats, feature: int, text: TokenText, extras: FeatureExtras) -> str:
    """A neighbour's label: its explanation, else its top tokens."""
    explanation = extras.explanations.get(feature)
    if explanation is not None and explanation.explanation.strip():
        label = explanation.explanation.strip()
        return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
    tokens = _top_tokens(stats, feature, text)
    return " · ".join(repr(t)[1:-1] for t in tokens) if tokens else "(no firings)"


def _examples(examples, s: slice) -> list[list[list]]:
    """[feature][example] = [value, context, position, tokens, acts], empty slots left out."""
    values = examples.values[s].double().tolist()
    context = examples.context[s].tolist()
    position = examples.position[s].tolist()
    tokens = examples.tokens[s].tolist()
    acts = torch.round(examples.acts[s].double(), decimals=3).tolist()
    return [
        [
            [_round(values[f][j]), context[f][j], position[f][j], tokens[f][j], acts[f][j]]
            for j in range(len(context[f]))
            if context[f][j] >= 0
        ]
        for f in range(len(context))
    ]


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if math.isfinite(x) else None


def _index(stats: FeatureStats, n_shown: int, text: TokenText, extras: FeatureExtras) -> dict[str, Any]:
    """One row per feature for the overview's table, search and sort."""
    rows = []
    for feature in range(n_shown):
        promoted = (
            [text(int(t)) for t in stats.logits.promoted[feature, :INDEX_TOKENS]] if stats.logits is not None else []
        )
        explanation = extras.explanations.get(feature)
        rows.append(
            [
                feature,
                int(stats.count[feature]),
                float(stats.frequency[feature]),
                _round(float(stats.max_activation[feature])),
                _round(float(stats.mean_activation[feature])),
                _top_tokens(stats, feature, text),
                promoted,
                explanation.explanation if explanation else None,
                explanation.detection if explanation else None,
                explanation.fuzzing if explanation else None,
            ]
        )
    return {
        "columns": [
            "id",
            "count",
            "frequency",
            "max",
            "mean",
            "top",
            "promoted",
            "explanation",
            "detection",
            "fuzzing",
        ],
        "rows": rows,
        "explained": len([f for f in extras.explanations if f < n_shown]),
    }


def _run_info(sae: SparseAutoencoder, stats: FeatureStats, metrics: dict[str, Any] | None) -> dict[str, Any]:
    metrics = metrics or {}
    return {
        "model": stats.meta.get("model") or metrics.get("model") or sae.cfg.model or "model",
        "hook": stats.meta.get("hook") or metrics.get("hook") or sae.cfg.hook or "?",
        "arch": sae.cfg.arch,
        "d_sae": sae.d_sae,
    }


def _cards(metrics: dict[str, Any] | None, stats: FeatureStats) -> list[dict[str, str]]:
    metrics = metrics or {}
    cards = []
    for key, label in (
        ("loss_recovered", "loss recovered (vs zero-ablation)"),
        ("delta_lm_loss", "ΔLM loss (nats)"),
        ("kl_div", "KL(clean ‖ SAE) per token"),
        ("l0", "L0"),
        ("explained_variance", "explained variance"),
        ("dead_fraction", "dead fraction"),
    ):
        if key in metrics:
            cards.append({"value": format_value(metrics[key]), "label": label})
    if not cards:
        mean_l0 = float((torch.arange(len(stats.l0_counts)) * stats.l0_counts).sum()) / max(stats.n_tokens, 1)
        cards = [
            {"value": f"{mean_l0:.1f}", "label": "L0"},
            {"value": f"{float((stats.count == 0).double().mean()):.3f}", "label": "dead fraction"},
        ]
    return cards


def _about(sae: SparseAutoencoder, stats: FeatureStats, n_shown: int) -> list[tuple[str, str]]:
    cfg = sae.cfg
    rows = [("architecture", cfg.arch), ("d_in", f"{cfg.d_in:,}"), ("features (d_sae)", f"{cfg.d_sae:,}")]
    if cfg.k is not None:
        rows.append(("k", str(cfg.k)))
    rows += [
        ("hook point", str(stats.meta.get("hook", cfg.hook))),
        ("tokens scanned for statistics", f"{stats.n_tokens:,}"),
        ("features that fired", f"{int((stats.count > 0).sum()):,}"),
        ("top examples per feature", str(stats.top.values.shape[1])),
        ("random examples per feature", str(stats.random.values.shape[1])),
    ]
    if n_shown < stats.d_sae:
        rows.append(("features in this report", f"{n_shown:,} (0–{n_shown - 1})"))
    return rows
