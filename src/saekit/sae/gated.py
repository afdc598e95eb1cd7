"""Gated SAE with weight sharing (Rajamanoharan et al. 2024, "Improving Dictionary
Learning with Gated Sparse Autoencoders").

    x̃ = x − b_dec
    π_gate = x̃ W_gate + b_gate,             f_gate = 1[π_gate > 0]
    π_mag  = exp(r_mag) ⊙ (x̃ W_gate) + b_mag, f_mag  = ReLU(π_mag)
    f = f_gate ⊙ f_mag

    L = ‖x − x̂‖² + λ ‖ReLU(π_gate) ⊙ ‖d_i‖‖₁ + ‖x − x̂_frozen(ReLU(π_gate))‖²

where x̂_frozen decodes through a stop-gradient copy of W_dec and b_dec. The L1 acts on
the gate path only, so the magnitudes the decoder sees are not shrunk. As with relu,
decoder_norm="unit" (the default) holds ‖d_i‖ = 1, "weighted" leaves W_dec free. W_gate is stored
as ``W_enc`` (the SAELens name); there is no ``b_enc``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder
from .config import SAEConfig


class GatedSAE(SparseAutoencoder):
    arch = "gated"
    coefficient_name = "l1_coefficient"

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        # With free decoder norms a feature whose ‖d_i‖ shrinks to 0 fires at no cost and
        # contributes nothing, which lets L0 drift up however large λ becomes.
        return self.cfg.decoder_norm == "unit"

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    @classmethod
    def default_coefficient(cls) -> float:
        return 1.0

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """π_gate, π_mag: [..., d_sae]."""
        projected = x @ self.W_enc - self.b_dec @ self.W_enc  # no gradient w.r.t. x needed
        return projected + self.b_gate, projected * torch.exp(self.r_mag) + self.b_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0) -> LossOutput:
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        f = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
        x_hat = self.decode(f)
        reconstruction = self.reconstruction_error(x, x_hat)
        gate = torch.relu(pi_gate)
        sparsity = self.coefficient(sparsity_scale) * (gate * self.decoder_norms()).float().sum(-1).mean()
        x_hat_gate = gate @ self.W_dec.detach() + self.b_dec.detach()
        auxiliary = self.reconstruction_error(x, x_hat_gate)
        parts = {"reconstruction": reconstruction, "sparsity": sparsity, "auxiliary": auxiliary}
        return LossOutput.from_features(reconstruction + sparsity + auxiliary, parts, f, x_hat)
