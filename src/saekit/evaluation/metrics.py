"""Metrics of an SAE on activations alone (no model needed).

With x the activations, x̂ = SAE(x), f = encode(x), over N tokens (for a transcoder, x
below is its target y and x̂ its prediction ŷ from its input):

    L0   = (1/N) Σ_t |{i : f_ti > 0}|           L1 = (1/N) Σ_t Σ_i |f_ti|
    MSE  = (1/(N·d)) Σ_t ‖x_t − x̂_t‖²
    FVU  = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − μ‖²    with μ the mean activation (variance
           about the mean, not about zero); explained variance = 1 − FVU
    γ    = argmin_γ E‖x̂/γ − x‖² = E‖x̂‖² / E⟨x, x̂⟩   (relative reconstruction bias,
           Rajamanoharan et al. 2024; γ < 1 means the SAE shrinks its reconstructions)

Firing frequency of feature i: the fraction of tokens with f_ti > 0; dead: never fires
on the evaluated tokens; dense: fires on more than ``dense_threshold`` of them.
Sums are accumulated in float64 in one streaming pass, so any amount of data fits.
"""

from __future__ import annotations

from typing import Any

import torch

from .._runtime.errors import UsageError
from ..data.pairs import as_pair
from ..data.source import iterate_once
from ..sae.base import SparseAutoencoder


@torch.no_grad()
def evaluate(
    sae: SparseAutoencoder,
    data,
    *,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Return l0, l1, mse, fvu, explained_variance, cosine_similarity, dead_fraction,
    dense_fraction, relative_reconstruction_bias, l2_norm_in, l2_norm_out, l2_ratio (mean
    ‖x̂‖/‖x‖), explained_variance_legacy (SAEBench's: the mean over tokens of 1 − ‖x − x̂‖²
    / ‖x − x̄_batch‖²), n_tokens (floats) and feature_frequency (a [d_sae] float tensor)."""
    device = torch.device(device) if device else sae.W_dec.device
    was_training = sae.training
    sae.eval()
    d_in, d_out = sae.d_in, sae.d_out
    # n, l0, l1, sq_err, Σ‖y‖², ‖ŷ‖², ⟨y,ŷ⟩, Σcos, Σ‖y‖, Σ‖ŷ‖, Σ‖ŷ‖/‖y‖, Σ legacy EV
    acc = torch.zeros(12, dtype=torch.float64, device=device)
    sum_x = torch.zeros(d_out, dtype=torch.float64, device=device)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    for batch in iterate_once(data, batch_size, max_tokens):
        pair = as_pair(batch)
        if pair.x.shape[-1] != d_in or pair.y.shape[-1] != d_out:
            raise UsageError(
                f"the data has width {pair.x.shape[-1]} (target {pair.y.shape[-1]}) but the SAE reads "
                f"d_in={d_in} (and predicts d_out={d_out})."
            )
        inputs = pair.x.to(device).float()
        x = inputs if pair.same else pair.y.to(device).float()  # what is reconstructed or predicted
        f = sae.encode(inputs).float()
        x_hat = sae.predict(inputs, sae.decode(f)).float()
        active = f > 0
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        squared_error = (x - x_hat).pow(2).sum(-1)
        deviation = (x - x.mean(0)).pow(2).sum(-1)  # SAEBench's "legacy" EV: per token, about the batch mean
        acc += torch.stack(
            [
                torch.tensor(float(x.shape[0]), device=device),
                active.sum(),
                f.abs().sum(),
                squared_error.sum(),
                x.pow(2).sum(),
                x_hat.pow(2).sum(),
                (x * x_hat).sum(),
                torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum(),
                norm_in.sum(),
                norm_out.sum(),
                (norm_out / torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)).sum(),
                (1 - squared_error / deviation.clamp_min(1e-12)).sum(),
            ]
        ).double()
        sum_x += x.sum(0).double()
        fired += active.sum(0).double()
    if was_training:
        sae.train()
    n = float(acc[0])
    if n == 0:
        raise ValueError("no activations to evaluate: the data was empty.")
    total_variance = float(acc[4] - sum_x.pow(2).sum() / n)  # Σ‖x − μ‖² = Σ‖x‖² − N‖μ‖²
    fvu = float(acc[3]) / total_variance if total_variance > 0 else float("nan")
    frequency = (fired / n).float().cpu()
    return {
        "n_tokens": int(n),
        "l0": float(acc[1]) / n,
        "l1": float(acc[2]) / n,
        "mse": float(acc[3]) / (n * d_out),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "cosine_similarity": float(acc[7]) / n,
        "relative_reconstruction_bias": float(acc[5] / acc[6]) if float(acc[6]) != 0 else float("nan"),
        "l2_norm_in": float(acc[8]) / n,
        "l2_norm_out": float(acc[9]) / n,
        "l2_ratio": float(acc[10]) / n,
        "explained_variance_legacy": float(acc[11]) / n,
        "dead_fraction": float((frequency == 0).float().mean()),
        "dense_fraction": float((frequency > dense_threshold).float().mean()),
        "feature_frequency": frequency,
    }
