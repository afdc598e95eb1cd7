"""A feature's neighbours: the features that fire with it, and the ones that point its way.

Co-firing (from activations). Over a sample of T tokens, with a_ti = 1[f_ti > 0],

    C_ij = Σ_t a_ti a_tj            (C_ii: the tokens on which feature i fired)

feature j's co-firing with feature i is reported two ways:

    ratio_ij   = C_ij / C_ii                     the fraction of i's firings on which j fires too
    jaccard_ij = C_ij / (C_ii + C_jj − C_ij)     the same, penalising a j that fires everywhere

and the neighbours of i are ranked by Jaccard (a dense feature has ratio ≈ 1 with every
feature; it is a near neighbour of none). Two features that always fire together have
both equal to 1. The sample is encoded once and kept as its sparse firing pattern A
[T, d_sae] (T · L0 entries); C is then made a block of rows at a time, C_R = A_Rᵀ A
(sparse × sparse), so memory stays at ``ROW_BLOCK_FLOATS`` floats whatever d_sae is.

Decoder neighbours (from the weights): the largest cosine similarities between row i of
W_dec and the other rows, computed ``chunk`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..sae.base import SparseAutoencoder

ROW_BLOCK_FLOATS = 1 << 24
"""Floats in one block of rows of C (64 MB): 3,640 rows at d_sae = 4,608."""


class FiringPattern(NamedTuple):
    """Which features fired on which tokens of a sample: the non-zeros of f."""

    tokens: Tensor
    """[nnz] int64: the token (row of the sample) of each firing."""
    features: Tensor
    """[nnz] int64: the feature of each firing."""
    n_tokens: int
    d_sae: int

    def matrix(self, rows: Tensor | None = None) -> Tensor:
        """A [T, d_sae] as a sparse float tensor, or A_Rᵀ [len(rows), T] for feature ids ``rows``."""
        if rows is None:
            index, size = torch.stack([self.tokens, self.features]), (self.n_tokens, self.d_sae)
        else:
            position = torch.full((self.d_sae,), -1, dtype=torch.int64)
            position[rows] = torch.arange(len(rows))
            keep = position[self.features] >= 0
            index = torch.stack([position[self.features[keep]], self.tokens[keep]])
            size = (len(rows), self.n_tokens)
        ones = torch.ones(index.shape[1], dtype=torch.float32)
        return torch.sparse_coo_tensor(index, ones, size, check_invariants=False).coalesce()


class CoFiring(NamedTuple):
    """For each asked-for feature, its k most co-firing features, by Jaccard."""

    features: Tensor
    """[n] int64: the features these rows describe."""
    indices: Tensor
    """[n, k] int64: neighbour ids, most co-firing first; −1 where fewer than k features ever fired with it."""
    jaccard: Tensor
    """[n, k] float32: C_ij / (C_ii + C_jj − C_ij)."""
    ratio: Tensor
    """[n, k] float32: C_ij / C_ii, the fraction of feature i's firings on which j fired too."""
    fired: Tensor
    """[n] int64: C_ii, the tokens of the sample on which feature i fired."""
    n_tokens: int
    """Tokens in the sample."""


class DecoderNeighbours(NamedTuple):
    """For each asked-for feature, the k features whose decoder directions are closest."""

    features: Tensor
    """[n] int64."""
    indices: Tensor
    """[n, k] int64, most similar first."""
    cosine: Tensor
    """[n, k] float32: cos(d_i, d_j)."""


@torch.no_grad()
def firing_pattern(sae: SparseAutoencoder, batches: Iterable[Tensor]) -> FiringPattern:
    """The firing pattern of the SAE's features on activation batches x [b, d_in] it reads."""
    device = sae.W_dec.device
    tokens, features, n_tokens = [], [], 0
    for x in batches:
        fired = (sae.encode(x.to(device, torch.float32)) > 0).nonzero().cpu()  # [nnz_b, 2]
        tokens.append(fired[:, 0] + n_tokens)
        features.append(fired[:, 1])
        n_tokens += x.shape[0]
    empty = torch.zeros(0, dtype=torch.int64)
    return FiringPattern(
        torch.cat(tokens) if tokens else empty, torch.cat(features) if features else empty, n_tokens, sae.d_sae
    )


def co_firing_counts(pattern: FiringPattern, rows: Sequence[int] | Tensor) -> Tensor:
    """C_R [len(rows), d_sae] float32: how often each of features ``rows`` fired on the same
    token as each feature (float32 counts are exact up to 2²⁴ tokens)."""
    rows = torch.as_tensor(rows, dtype=torch.int64)
    if pattern.n_tokens > 1 << 24:
        raise ValueError(f"a co-firing sample may have at most {1 << 24:,} tokens; use fewer.")
    return torch.sparse.mm(pattern.matrix(rows), pattern.matrix()).to_dense()


def top_co_firing(pattern: FiringPattern, *, k: int = 8, features: Sequence[int] | None = None) -> CoFiring:
    """The k most co-firing features of each of ``features`` (default: all), ranked by
    Jaccard; a feature is never its own neighbour, and one that never fired with it is no neighbour."""
    d_sae = pattern.d_sae
    rows = torch.arange(d_sae) if features is None else torch.as_tensor(list(features), dtype=torch.int64)
    k = max(0, min(k, d_sae - 1))
    fired = torch.bincount(pattern.features, minlength=d_sae).float()  # C_ii
    block = max(1, ROW_BLOCK_FLOATS // d_sae)
    indices, jaccard, ratio = [], [], []
    for begin in range(0, len(rows), block):
        ids = rows[begin : begin + block]
        both = co_firing_counts(pattern, ids)  # [c, d_sae]
        union = fired[ids, None] + fired[None, :] - both
        score = torch.where(both > 0, both / union.clamp_min(1), torch.zeros_like(both))
        score[torch.arange(len(ids)), ids] = -1.0  # not itself
        top = score.topk(k, dim=1)
        found = top.values > 0
        indices.append(torch.where(found, top.indices, -1))
        jaccard.append(torch.where(found, top.values, 0.0))
        ratio.append(torch.where(found, both.gather(1, top.indices) / fired[ids, None].clamp_min(1), 0.0))
    empty = torch.zeros(0, k)
    return CoFiring(
        rows,
        torch.cat(indices) if indices else empty.long(),
        torch.cat(jaccard) if jaccard else empty,
        torch.cat(ratio) if ratio else empty,
        fired[rows].long(),
        pattern.n_tokens,
    )


@torch.no_grad()
def decoder_neighbours(
    W_dec: Tensor, *, k: int = 8, features: Sequence[int] | None = None, chunk: int = 1024
) -> DecoderNeighbours:
    """The k rows of W_dec [d_sae, d] with the largest cosine to each of ``features``' rows."""
    d_sae = W_dec.shape[0]
    rows = torch.arange(d_sae) if features is None else torch.as_tensor(list(features), dtype=torch.int64)
    k = max(0, min(k, d_sae - 1))
    unit = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)  # [d_sae, d]
    indices, cosine = [], []
    for begin in range(0, len(rows), chunk):
        ids = rows[begin : begin + chunk].to(unit.device)
        similarity = unit[ids] @ unit.t()  # [c, d_sae]
        similarity[torch.arange(len(ids)), ids] = -torch.inf
        top = similarity.topk(k, dim=1)
        indices.append(top.indices.cpu())
        cosine.append(top.values.cpu())
    empty = torch.zeros(0, k)
    return DecoderNeighbours(
        rows, torch.cat(indices) if indices else empty.long(), torch.cat(cosine) if cosine else empty
    )
