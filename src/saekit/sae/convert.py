"""Exact conversions between architectures that compute the same function.

Gated → JumpReLU (Rajamanoharan et al. 2024, weight sharing): with
z = exp(r_mag) ⊙ (x̃ W_gate) + b_mag = π_mag, the gate π_gate > 0 holds exactly when
z > b_mag − exp(r_mag) ⊙ b_gate (exp > 0 keeps the inequality's direction), and f_mag =
ReLU(z); so f = z ⊙ 1[z > θ] with θ = max(0, b_mag − exp(r_mag) ⊙ b_gate),
W_enc = W_gate ⊙ exp(r_mag) and b_enc = b_mag.

BatchTopK and Matryoshka BatchTopK (eval mode) → JumpReLU: f = z ⊙ 1[z > θ] already,
with θ their running threshold.
ReLU → JumpReLU: θ = 0.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from .._runtime.errors import UsageError
from .base import OPTION_FIELDS, SPARSITY_FIELDS, SparseAutoencoder
from .config import SAEConfig
from .jumprelu import JumpReluSAE


@torch.no_grad()
def convert(sae: SparseAutoencoder, arch: str) -> SparseAutoencoder:
    """Return a new SAE of architecture ``arch`` that gives the same features and
    reconstructions as ``sae`` on every input. Only conversions that are exact exist."""
    if arch != "jumprelu":
        raise UsageError(f"saekit can convert to 'jumprelu' only (asked for {arch!r}).")
    if sae.arch == "gated":
        scale = torch.exp(sae.r_mag)
        W_enc, b_enc = sae.W_enc * scale, sae.b_mag.clone()
        threshold = torch.clamp(sae.b_mag - scale * sae.b_gate, min=0.0)
    elif sae.arch in ("batchtopk", "matryoshka_batchtopk"):
        W_enc, b_enc = sae.W_enc.clone(), sae.b_enc.clone()
        threshold = sae.threshold.expand(sae.d_sae).clone()
    elif sae.arch == "relu":
        W_enc, b_enc = sae.W_enc.clone(), sae.b_enc.clone()
        threshold = torch.zeros_like(b_enc)
    elif sae.arch == "jumprelu":
        W_enc, b_enc, threshold = sae.W_enc.clone(), sae.b_enc.clone(), sae.threshold.clone()
    else:
        raise UsageError(
            f"a {sae.arch} SAE has no exactly equivalent JumpReLU SAE (a per-token top-k is not a "
            "fixed threshold); convert gated, batchtopk, matryoshka_batchtopk, relu or jumprelu SAEs."
        )
    fields = json.loads(sae.cfg.to_json())
    defaults = {f.name: f.default for f in dataclasses.fields(SAEConfig)}
    for name in (*SPARSITY_FIELDS, *OPTION_FIELDS):  # what applies to the source, at JumpReLU's defaults
        fields[name] = defaults[name]
    fields.update(arch="jumprelu", l0_coefficient=0.0)
    fields["provenance"] = {**fields.get("provenance", {}), "converted_from": sae.arch}
    out = JumpReluSAE(SAEConfig.from_dict(fields))
    out.to(sae.W_dec.device)
    out.W_enc.copy_(W_enc)
    out.b_enc.copy_(b_enc)
    out.threshold.copy_(threshold)
    out.W_dec.copy_(sae.W_dec)
    out.b_dec.copy_(sae.b_dec)
    if sae.cfg.feature_scale:
        out.feature_scale.copy_(sae.feature_scale)
    return out.eval()
