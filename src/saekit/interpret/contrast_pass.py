"""The corpus pass of ``saekit contrast``: one SAE's firing counts on two corpora.

Each corpus goes through encode_pass.py once, for every feature's firings per context
(their totals are the counts, their spread the dispersion), and corpus A through
``collect_feature_stats`` for its top examples; interpret/contrast.py ranks the counts.
"""

from __future__ import annotations

import torch

from .._runtime.errors import UsageError
from ..data.corpus import TokenizedCorpus
from ..data.model import LoadedModel
from ..sae.base import SparseAutoencoder
from .collect import collect_feature_stats
from .contrast import DEFAULT_ALPHA, DEFAULT_PRIOR, Ranking, dispersion, rank
from .encode_pass import firings_per_context
from .stats import FeatureStats


def sample_contexts(corpus: TokenizedCorpus, max_tokens: int | None, *, seed: int = 0) -> TokenizedCorpus:
    """Random whole contexts of ``corpus`` (chosen by ``seed``, kept in corpus order) holding
    at least ``max_tokens`` train-mask tokens, so that a sample spreads over every document
    instead of the first ones; the whole corpus when it holds fewer."""
    if max_tokens is None or corpus.n_tokens <= max_tokens:
        return corpus
    order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(seed))
    held = corpus.train_mask[order].sum(dim=1).cumsum(0)
    n = int(torch.searchsorted(held, max_tokens)) + 1
    return corpus.select(order[:n].sort().values, f"sample:{max_tokens}:{seed}")


def contrast_corpora(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    corpus_a: TokenizedCorpus,
    corpus_b: TokenizedCorpus,
    *,
    n_top: int = 8,
    batch_contexts: int = 8,
    prior: float = DEFAULT_PRIOR,
    alpha: float = DEFAULT_ALPHA,
    progress: bool = True,
) -> tuple[Ranking, FeatureStats]:
    """(ranking, statistics on A): every feature's firing rate on A against B, ranked by
    the lower bound of its log-odds ratio, each side's variance inflated by the
    dispersion of its firings over contexts (contrast.py). Costs two passes over A (one
    for its top examples) and one over B."""
    dispersions, counts, sizes = [], [], []
    for name, corpus in (("A", corpus_a), ("B", corpus_b)):
        if corpus.n_tokens == 0:
            raise UsageError(f"corpus {name} has no tokens to count features on; give it some text.")
        per_context, tokens = firings_per_context(
            sae, loaded, corpus, batch_contexts=batch_contexts, progress=progress, desc=f"firings on {name}"
        )
        dispersions.append(dispersion(per_context, tokens))
        counts.append(per_context.sum(0, dtype=torch.int64))
        sizes.append(int(tokens.sum()))
    stats_a = collect_feature_stats(
        sae, loaded, corpus_a, n_top=n_top, n_random=0, n_logits=1, batch_contexts=batch_contexts, progress=progress
    )
    ranking = rank(
        counts[0],
        sizes[0],
        counts[1],
        sizes[1],
        prior=prior,
        alpha=alpha,
        dispersion_a=dispersions[0],
        dispersion_b=dispersions[1],
    )
    return ranking, stats_a
