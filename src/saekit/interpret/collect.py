"""One streaming pass over a corpus that collects every feature's statistics at once.

Per batch of whole contexts: run the model to the hook point, encode with the SAE
(f: [B, T, d_sae], zeroed on tokens outside the train mask), then update

    count_i += Σ_t 1[f_ti > 0]         activation_sum_i += Σ_t f_ti      max_i = max(max_i, f_ti)
    histogram of the non-zero f_ti in log-spaced bins (fixed edges)
    l0_counts[Σ_i 1[f_ti > 0]] += 1 for every token
    the top-n examples by activation, and a uniform random sample of n' firings

Memory is bounded by the state, O(d_sae · (n + n') · window + d_sae · n_bins), and one
batch of features, whatever the corpus size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.corpus import TokenizedCorpus
from ..data.model import LoadedModel, capture, resolve_hook
from ..evaluation.splice import limit_tokens
from ..sae.base import SparseAutoencoder
from .examples import ExampleHeap
from .logits import logit_effects
from .stats import FeatureStats


@torch.no_grad()
def collect_feature_stats(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    tokens: TokenizedCorpus,
    *,
    hook: str | None = None,
    n_top: int = 16,
    n_random: int = 8,
    window: tuple[int, int] = (16, 6),
    n_logits: int = 10,
    batch_contexts: int = 8,
    max_tokens: int | None = None,
    hist_range: tuple[float, float] | None = None,
    bins_per_decade: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> FeatureStats:
    """Statistics of every feature of ``sae`` on the train-mask tokens of ``tokens``.

    ``window``: (tokens before, tokens after) kept around each example. ``hist_range``:
    (lo, hi) of the log-spaced histogram bins; by default one decade above the largest
    activation of the first batch down to six decades below that. ``batch_contexts``
    contexts go through each forward pass; ``max_tokens`` keeps the leading contexts holding that many
    train-mask tokens. ``seed`` fixes the random examples.
    """
    hook = str(resolve_hook(loaded, hook or sae.cfg.hook or _no_hook()))
    if sae.d_in != loaded.d_model:
        raise ValueError(f"the SAE reads d_in={sae.d_in} but {loaded.name} has d_model={loaded.d_model}.")
    if batch_contexts < 1 or n_top < 1 or n_random < 0 or min(window) < 0 or bins_per_decade < 1:
        raise ValueError("batch_contexts, n_top and bins_per_decade must be ≥ 1, n_random and the window ≥ 0.")
    corpus = limit_tokens(tokens, max_tokens)
    device = sae.W_dec.device
    d_sae = sae.d_sae
    state = _State(d_sae, n_top, n_random, window, hist_range, bins_per_decade, seed, device)
    was_training = sae.training
    sae.eval()
    from tqdm.auto import tqdm

    try:
        bar = tqdm(
            total=corpus.n_tokens, desc=f"feature stats {hook}", unit="tok", unit_scale=True, disable=not progress
        )
        with bar:
            for begin in range(0, len(corpus), batch_contexts):
                end = begin + batch_contexts
                mask = corpus.train_mask[begin:end].to(device)
                act = capture(loaded, corpus.tokens[begin:end], hook)[hook]
                f = sae.encode(act.to(device, torch.float32)) * mask[..., None]
                state.add(f, mask, corpus.tokens[begin:end].to(device), corpus.context_index[begin:end].to(device))
                bar.update(int(mask.sum()))
    finally:
        sae.train(was_training)
    if state.n_tokens == 0:
        raise ValueError("the corpus has no train-mask tokens: there is nothing to collect statistics on.")
    meta = {
        "model": loaded.name,
        "hook": hook,
        "corpus_fingerprint": corpus.fingerprint,
        "context_size": corpus.context_size,
        "n_contexts": len(corpus),
        "sae_arch": sae.cfg.arch,
        "n_top": n_top,
        "n_random": n_random,
        "window": list(window),
        "seed": seed,
    }
    return state.result(logit_effects(sae, loaded, hook, k=n_logits), meta)


def _no_hook() -> str:
    raise ValueError("the SAE's cfg.json names no hook point; pass hook= (CLI: --hook), e.g. 'layers.15.resid_post'.")


class _State:
    """The running sums, histograms and example heaps of the pass."""

    def __init__(self, d_sae, n_top, n_random, window, hist_range, bins_per_decade, seed, device) -> None:
        before, after = window
        self.n_tokens = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.activation_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_activation = torch.zeros(d_sae, device=device)
        self.l0_counts = torch.zeros(d_sae + 1, dtype=torch.int64, device=device)
        self.top = ExampleHeap(d_sae, n_top, before, after, device)
        self.random = ExampleHeap(d_sae, n_random, before, after, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.hist_range, self.bins_per_decade = hist_range, bins_per_decade
        self.edges: Tensor | None = None
        self.hist: Tensor | None = None
        self.d_sae, self.device = d_sae, device

    def add(self, f: Tensor, mask: Tensor, tokens: Tensor, context_index: Tensor) -> None:
        """f: [B, T, d_sae] (0 outside the mask); mask, tokens: [B, T]; context_index: [B]."""
        flat = f.reshape(-1, self.d_sae)
        fired = flat > 0
        self.n_tokens += int(mask.sum())
        self.count += fired.sum(0)
        self.activation_sum += flat.sum(0, dtype=torch.float64)
        self.max_activation = torch.maximum(self.max_activation, flat.amax(0))
        self.l0_counts += torch.bincount(fired.sum(1)[mask.flatten()], minlength=self.d_sae + 1)
        self._add_histogram(flat, fired)
        never = torch.tensor(float("-inf"), device=flat.device)
        self.top.push(torch.where(fired, flat, never), f, tokens, context_index)
        if self.random.n:
            keys = torch.rand(flat.shape, generator=self.generator, device=flat.device)
            self.random.push(torch.where(fired, keys, never), f, tokens, context_index)

    def _add_histogram(self, flat: Tensor, fired: Tensor) -> None:
        token, feature = fired.nonzero(as_tuple=True)
        values = flat[token, feature].double()
        if self.edges is None:
            if self.hist_range is None and values.numel() == 0:
                return  # nothing fired yet: the edges wait for the first firing
            self.edges = _log_edges(self.hist_range or _default_range(float(values.max())), self.bins_per_decade)
            self.edges = self.edges.to(flat.device)
            self.hist = torch.zeros(self.d_sae, len(self.edges) - 1, dtype=torch.int64, device=flat.device)
        n_bins = self.hist.shape[1]
        bins = torch.bucketize(values, self.edges[1:-1], right=True)  # edges[j] ≤ v < edges[j+1]
        self.hist += torch.bincount(feature * n_bins + bins, minlength=self.d_sae * n_bins).view(self.d_sae, n_bins)

    def result(self, logits, meta) -> FeatureStats:
        edges = self.edges if self.edges is not None else _log_edges(_default_range(1.0), self.bins_per_decade)
        hist = self.hist if self.hist is not None else torch.zeros(self.d_sae, len(edges) - 1, dtype=torch.int64)
        return FeatureStats(
            n_tokens=self.n_tokens,
            count=self.count.cpu(),
            activation_sum=self.activation_sum.cpu(),
            max_activation=self.max_activation.cpu(),
            hist_edges=edges.cpu(),
            hist_counts=hist.cpu(),
            l0_counts=self.l0_counts.cpu(),
            top=self.top.result("key"),
            random=self.random.result("value"),
            logits=logits,
            meta=meta,
        )


def _default_range(largest: float) -> tuple[float, float]:
    """Whole decades: one above the largest activation seen, six below it."""
    top = math.ceil(math.log10(largest)) + 1 if largest > 0 else 1
    return 10.0 ** (top - 7), 10.0**top


def _log_edges(hist_range: tuple[float, float], bins_per_decade: int) -> Tensor:
    lo, hi = hist_range
    if not 0 < lo < hi:
        raise ValueError(f"hist_range must be (lo, hi) with 0 < lo < hi, got {hist_range}.")
    n_bins = max(1, math.ceil(round(math.log10(hi / lo) * bins_per_decade, 9)))
    return torch.logspace(math.log10(lo), math.log10(lo) + n_bins / bins_per_decade, n_bins + 1, dtype=torch.float64)


@torch.no_grad()
def collect_firings(
    sae: SparseAutoencoder,
    activations,
    features: list[int],
    *,
    max_tokens: int | None = None,
    batch_rows: int = 4096,
    progress: bool = True,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Every firing of the chosen ``features`` over the leading rows of ``activations``.

    ``activations``: anything indexable by row slices into [rows, d_in] tensors, e.g. an
    activation store's ``.activations`` (the rows its SAE was trained on). Returns, per
    feature, (rows int64, values float32) of the rows where f_i > 0, in row order: every
    other row of the scanned range is a row where the feature does not fire. Memory holds
    the firings only (Σ_i count_i), one batch of the full encoding at a time.
    """
    n_rows = len(activations) if max_tokens is None else min(len(activations), max_tokens)
    device = sae.W_dec.device
    chosen = torch.tensor(features, dtype=torch.int64, device=device)
    found_rows: list[Tensor] = []
    found_features: list[Tensor] = []
    found_values: list[Tensor] = []
    was_training = sae.training
    sae.eval()
    from tqdm.auto import tqdm

    try:
        with tqdm(total=n_rows, desc="encoding", unit="tok", unit_scale=True, disable=not progress) as bar:
            for begin in range(0, n_rows, batch_rows):
                end = min(begin + batch_rows, n_rows)
                f = sae.encode(activations[begin:end].to(device, torch.float32))[:, chosen]  # [rows, n_chosen]
                row, column = (f > 0).nonzero(as_tuple=True)
                found_rows.append((row + begin).cpu())
                found_features.append(column.cpu())
                found_values.append(f[row, column].float().cpu())
                bar.update(end - begin)
    finally:
        sae.train(was_training)
    rows = torch.cat(found_rows) if found_rows else torch.zeros(0, dtype=torch.int64)
    columns = torch.cat(found_features) if found_features else torch.zeros(0, dtype=torch.int64)
    values = torch.cat(found_values) if found_values else torch.zeros(0)
    out = {}
    for j, feature in enumerate(features):
        keep = columns == j
        out[feature] = (rows[keep], values[keep])  # rows ascending: batches in order, nonzero row-major
    return out
