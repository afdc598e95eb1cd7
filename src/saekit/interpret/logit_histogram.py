"""The distribution of a feature's logit weights: W_U · norm(d_i) over the whole vocabulary.

logits.py keeps the ends of this vector (the promoted and suppressed tokens); the
histogram shows its shape, as SAEDashboard and Neuronpedia pages do: a feature whose
promoted tokens stand far out of a narrow bulk writes a few tokens, one with a wide,
symmetric spread writes none in particular. The effect vectors are computed ``chunk``
features at a time ([chunk, vocab] floats) and only the counts are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..data.model import LoadedModel, parse_hook, unembed
from ..sae.base import SparseAutoencoder


class LogitHistograms(NamedTuple):
    """Per feature, ``bins`` equal-width bins between the smallest and largest logit weight."""

    features: Tensor
    """[n] int64."""
    low: Tensor
    """[n] float32: min over the vocabulary of W_U · norm(d_i), the first bin's left edge."""
    high: Tensor
    """[n] float32: the max, the last bin's right edge (the last bin includes it)."""
    counts: Tensor
    """[n, bins] int64: tokens per bin; each row sums to the vocabulary size."""


def histogram_rows(values: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """(low [n], high [n], counts [n, bins]) of each row of ``values`` [n, m], equal-width
    bins from the row's min to its max, the max in the last bin."""
    low, high = values.min(dim=1).values, values.max(dim=1).values
    width = (high - low).clamp_min(torch.finfo(values.dtype).tiny)
    index = ((values - low[:, None]) / width[:, None] * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(values.shape[0], bins, dtype=torch.int64, device=values.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return low, high, counts


@torch.no_grad()
def logit_histograms(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    hook: str,
    *,
    features: Sequence[int] | None = None,
    bins: int = 40,
    chunk: int = 256,
) -> LogitHistograms:
    """Histograms of W_U · norm(d_i) for each of ``features`` (default: all); the same
    effect vector as ``logit_effects`` (logits.py), so the histogram and the promoted and
    suppressed lists describe one thing."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}.")
    norm, W_U = unembed(loaded)
    W_U = W_U.float()  # [vocab, d_model]
    skip_norm = parse_hook(hook).site == "final_norm"
    rows = torch.arange(sae.d_sae) if features is None else torch.as_tensor(list(features), dtype=torch.int64)
    lows, highs, counts = [], [], []
    for begin in range(0, len(rows), chunk):
        d = sae.W_dec[rows[begin : begin + chunk].to(sae.W_dec.device)].detach().to(W_U.device)  # [c, d_model]
        direction = d.float() if skip_norm else norm(d.to(loaded.dtype)).float()
        low, high, count = histogram_rows(direction @ W_U.t(), bins)  # effect: [c, vocab]
        lows.append(low.cpu())
        highs.append(high.cpu())
        counts.append(count.cpu())
    if not counts:
        return LogitHistograms(rows, torch.zeros(0), torch.zeros(0), torch.zeros(0, bins, dtype=torch.int64))
    return LogitHistograms(rows, torch.cat(lows), torch.cat(highs), torch.cat(counts))
