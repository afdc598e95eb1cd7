"""The feature-suppression fix: a per-feature scale s between encoder and decoder.

An L1 penalty shrinks feature magnitudes below what reconstruction wants (for one binary
feature and loss ‖x̂ − x‖²/d + c·|f| the optimum reconstructs x = 1 as 1 − c/2). With the
encoder and decoder frozen, s is fitted to minimise reconstruction alone,

    s* = argmin_s E‖x − ((s ⊙ f(x)) W_dec + b_dec)‖²,

which undoes the shrinkage without changing which features fire. The problem is convex
(least squares in s); Adam on mini-batches solves it for any d_sae and any data size.
"""

from __future__ import annotations

import math

import torch

from ..data.pairs import as_pair, check_fits
from ..data.source import as_source
from ..sae.base import SparseAutoencoder


def fit_scale(
    sae: SparseAutoencoder,
    data,
    *,
    steps: int = 1000,
    batch_size: int = 4096,
    lr: float = 0.01,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> SparseAutoencoder:
    """Add (or refit) the feature scale vector s of ``sae`` in place and return it."""
    source = as_source(data)
    check_fits(source, sae)
    device = torch.device(device) if device else sae.W_dec.device
    sae.add_feature_scale()
    with torch.no_grad():
        sae.feature_scale.fill_(1.0)
    was_training = sae.training
    sae.eval()  # features as at inference (e.g. BatchTopK's threshold)
    trainable = [p for p in sae.parameters()]
    saved_flags = [p.requires_grad for p in trainable]
    for p in trainable:
        p.requires_grad_(p is sae.feature_scale)
    optimizer = torch.optim.Adam([sae.feature_scale], lr=lr)
    batches = source.batches(batch_size, seed=seed + 104729)
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            pair = as_pair(next(batches)).to(device)
            x = pair.x.float()
            with torch.no_grad():
                f = sae.encode(x)
            loss = sae.reconstruction_error(x if pair.same else pair.y.float(), sae.predict(x, sae.decode(f)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for p, flag in zip(trainable, saved_flags):
            p.requires_grad_(flag)
        sae.train(was_training)
    return sae
