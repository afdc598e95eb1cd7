"""One pass of a corpus through the model and the SAE, batch by batch: the small shared
loop (capture at the hook point, encode, zero outside the train mask) for statistics
that FeatureStats does not keep, such as firings per context (contrast_pass.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..data.corpus import TokenizedCorpus
from ..data.model import LoadedModel, capture, resolve_hook
from ..sae.base import SparseAutoencoder


@torch.no_grad()
def encoded_batches(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    corpus: TokenizedCorpus,
    *,
    hook: str | None = None,
    batch_contexts: int = 8,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(first context index, f [B, T, d_sae] float32 zeroed outside the train mask, mask
    [B, T] bool) for consecutive batches of ``batch_contexts`` contexts."""
    hook = str(resolve_hook(loaded, hook or sae.cfg.hook))
    device = sae.W_dec.device
    was_training = sae.training
    sae.eval()
    try:
        for begin in range(0, len(corpus), batch_contexts):
            end = begin + batch_contexts
            mask = corpus.train_mask[begin:end].to(device)
            act = capture(loaded, corpus.tokens[begin:end], hook)[hook]
            yield begin, sae.encode(act.to(device, torch.float32)) * mask[..., None], mask
    finally:
        sae.train(was_training)


def firings_per_context(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    corpus: TokenizedCorpus,
    *,
    batch_contexts: int = 8,
    progress: bool = True,
    desc: str = "firings per context",
) -> tuple[Tensor, Tensor]:
    """(counts [n_contexts, d_sae] int32: tokens of each context each feature fires on,
    tokens [n_contexts] int64: train-mask tokens of each context)."""
    from tqdm.auto import tqdm

    counts = torch.zeros(len(corpus), sae.d_sae, dtype=torch.int32)
    with tqdm(total=corpus.n_tokens, desc=desc, unit="tok", unit_scale=True, disable=not progress) as bar:
        for begin, f, mask in encoded_batches(sae, loaded, corpus, batch_contexts=batch_contexts):
            counts[begin : begin + f.shape[0]] = (f > 0).sum(dim=1, dtype=torch.int32).cpu()
            bar.update(int(mask.sum()))
    return counts, corpus.train_mask.sum(dim=1)
