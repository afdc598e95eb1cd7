"""Logit effects: which output tokens a feature's decoder direction pushes up or down.

For feature i with decoder direction d_i (row i of W_dec) read at a residual-stream hook,

    effect_i = W_U · norm(d_i)        [vocab]

with ``norm`` the model's final norm and W_U [vocab, d_model] its unembedding (the
"logit lens" of the direction; Bricken et al. 2023 and Neuronpedia show the same lists).
For RMSNorm, norm(d) = γ ⊙ d / rms(d): the ranking equals that of W_U (γ ⊙ d_i), the
direct effect of adding d_i to the last residual stream with the norm's scale frozen,
and dividing by rms(d_i) puts every feature on the same scale. At the ``final_norm`` hook
the direction is already normalised and effect_i = W_U d_i.

This is the direct path only: layers after the hook point can change what a feature
finally does to the output.
"""

from __future__ import annotations

import torch

from ..data.model import LoadedModel, parse_hook, unembed
from ..sae.base import SparseAutoencoder
from .stats import LogitEffects


@torch.no_grad()
def logit_effects(
    sae: SparseAutoencoder, loaded: LoadedModel, hook: str, *, k: int = 10, chunk: int = 512
) -> LogitEffects:
    """The k most promoted and k most suppressed tokens of every feature (``chunk``
    features at a time, so memory stays at chunk × vocab floats)."""
    norm, W_U = unembed(loaded)
    W_U = W_U.float()  # [vocab, d_model]
    if k < 1 or k > W_U.shape[0]:
        raise ValueError(f"k must be between 1 and the vocabulary size {W_U.shape[0]}, got {k}.")
    skip_norm = parse_hook(hook).site == "final_norm"
    promoted, promoted_values, suppressed, suppressed_values = [], [], [], []
    for begin in range(0, sae.d_sae, chunk):
        d = sae.W_dec[begin : begin + chunk].detach().to(W_U.device)  # [c, d_model]
        direction = d.float() if skip_norm else norm(d.to(loaded.dtype)).float()
        effect = direction @ W_U.t()  # [c, vocab]
        top = effect.topk(k, dim=1)
        bottom = (-effect).topk(k, dim=1)
        promoted.append(top.indices.cpu())
        promoted_values.append(top.values.cpu())
        suppressed.append(bottom.indices.cpu())
        suppressed_values.append((-bottom.values).cpu())
    return LogitEffects(
        torch.cat(promoted), torch.cat(promoted_values), torch.cat(suppressed), torch.cat(suppressed_values)
    )
