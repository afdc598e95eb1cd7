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

from .base import LossOutput, SparseAutoencoder, overwritable, width_scaled_lr
from .config import SAEConfig
from .selection import positive_entries
from .sparse_decode import select_entries, sparse_decode


class GatedSAE(SparseAutoencoder):
    arch = "gated"
    summary = "1[π_gate > 0] ⊙ ReLU(π_mag), weights shared; λ ‖ReLU(π_gate) ⊙ ‖d_i‖‖₁ + auxiliary reconstruction"
    coefficient_name = "l1_coefficient"
    options = ("decoder_norm",)

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

    def recommended_lr(self) -> float:
        """1e-3·√(4608 / d_sae), two thirds of the others' rate: on SmolLM2 layers.15 it was
        the best of 4e-4, 1e-3 and 1.5e-3 after 2,000 steps (FVU 0.038 against 0.053 and
        0.060, KL 0.19 against 0.28 and 0.26; the table in ``SparseAutoencoder.recommended_lr``)
        and beat 4e-4 after 300. One seed: what differs between the three is mostly how many
        latents die (8% against 22% and 24%), gates that close on every token and get no
        gradient from then on, which is gated's remaining weakness on this data (an AuxK term,
        tried, revives none: its ReLU'd top-k of closed gates' pre-activations is zero)."""
        return width_scaled_lr(self.d_sae) * 2 / 3

    @property
    def b_enc(self) -> Tensor:
        """No encoder bias of its own (b_gate and b_mag play that part): zeros, for tools
        that read every SAE's b_enc (SAEBench)."""
        return self.W_enc.new_zeros(self.d_sae)

    def projection(self, x: Tensor) -> Tensor:
        """P = (x − b_dec) W_gate = x W_gate − b_dec W_gate: [..., d_sae] (no gradient w.r.t. x needed)."""
        return self.encoder_matmul(self.normalize_input(x), self.centred_bias(self.W_enc.new_zeros(self.d_sae)))

    @torch.no_grad()
    def calibrate(self, sample: Tensor) -> None:
        """The gate opens on target_l0 / d_sae of the tokens; the magnitude path starts at
        the same quantile, so that open gates pass comparable magnitudes."""
        if self.cfg.target_l0 is None:
            return
        projected = self.projection(sample)
        self.b_gate.sub_(self.firing_quantiles(projected + self.b_gate))
        self.b_mag.sub_(self.firing_quantiles(torch.exp(self.r_mag) * projected + self.b_mag))

    @torch.no_grad()
    def shift_thresholds(self, rate: Tensor) -> None:
        """The gate decides which features fire, but a feature counts (and decodes) only
        where its magnitude is positive too. So after the gate's firing point moves, b_mag
        is lifted where needed so that the magnitude path is ≥ 0 wherever the gate opens
        (π_mag ≥ 0 at π_gate = 0: b_mag ≥ exp(r_mag) ⊙ b_gate); it is never lowered.
        Moving b_gate alone opened gates onto negative magnitudes, where f = 0 and no
        gradient reaches b_mag to pull it back: the controller saw no rise in L0, kept
        lowering the gates, and the latents died (toy "superposition", TOY_SETTINGS: 72% of
        the true directions, 67% dead; with the lift 98.7%, 2% dead; "correlated" 93% to 100%;
        shifting b_mag by the gate's factor instead also recovers them but moves every
        magnitude with it: γ 1.07 on "easy" against 1.02)."""
        self._scale_threshold_bias(self.b_gate, rate)
        torch.maximum(self.b_mag, torch.exp(self.r_mag) * self.b_gate, out=self.b_mag)

    def firing_margins(self, x: Tensor, floor: float) -> Tensor:
        """The gate decides: x̃ W_gate fires where it exceeds −b_gate (the lift in
        shift_thresholds keeps the magnitude positive wherever the gate opens)."""
        return self._margins(x, torch.zeros_like(self.b_gate), -self.b_gate, floor)

    def encode(self, x: Tensor) -> Tensor:
        return gated_features(self.projection(x), self.b_gate, self.r_mag, self.b_mag)[0]

    def loss(self, x: Tensor, *, target: Tensor | None = None, sparsity_scale: float = 1.0) -> LossOutput:
        target = x if target is None else target
        if self.train_sparsely(x):
            return self._sparse_loss(x, target, sparsity_scale)
        f, gate = gated_features(self.projection(x), self.b_gate, self.r_mag, self.b_mag)
        x_hat = self.predict(x, self.decode(f))
        reconstruction = self.reconstruction_error(target, x_hat)
        # Σ_t Σ_i ReLU(π_gate)_ti ‖d_i‖ / B, summed over tokens first (one pass, no products).
        sparsity = self.coefficient(sparsity_scale) * (gate.sum(0).float() @ self.decoder_norms()) / x.shape[0]
        x_hat_gate = self._frozen_predict(x, gate @ self.W_dec.detach() + self.b_dec.detach())
        auxiliary = self.reconstruction_error(target, x_hat_gate)
        parts = {"reconstruction": reconstruction, "sparsity": sparsity, "auxiliary": auxiliary}
        return LossOutput.from_features(reconstruction + sparsity + auxiliary, parts, f, x_hat)

    def _frozen_predict(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The gate path's prediction: the decoder and the skip term frozen (stop-gradient)."""
        skip = self.skip(x.detach())
        return x_hat if skip is None else x_hat + skip.detach().to(x_hat.dtype)

    def _sparse_loss(self, x: Tensor, target: Tensor, sparsity_scale: float) -> LossOutput:
        """The same loss from the open gates alone (π_gate > 0): f and ReLU(π_gate) are zero
        everywhere else, and so is every gradient through them."""
        gates = select_entries(x, self.W_enc, self.b_gate, self.centre, positive_entries)  # π_gate > 0
        latents = gates.indices
        projected = gates.values - self.b_gate[latents].to(gates.values.dtype)  # P = x̃ W_gate at those entries
        f = torch.relu(torch.exp(self.r_mag[latents]) * projected + self.b_mag[latents])
        x_hat = self.predict(x, self.decode_sparse(gates._replace(values=f)))
        reconstruction = self.reconstruction_error(target, x_hat)
        sparsity = (
            self.coefficient(sparsity_scale) * (gates.values.float() @ self.decoder_norms()[latents]) / x.shape[0]
        )
        x_hat_gate = self._frozen_predict(
            x, sparse_decode(gates.values, latents, self.W_dec.detach(), gates.offsets) + self.b_dec.detach()
        )
        auxiliary = self.reconstruction_error(target, x_hat_gate)
        parts = {"reconstruction": reconstruction, "sparsity": sparsity, "auxiliary": auxiliary}
        return LossOutput.from_entries(
            reconstruction + sparsity + auxiliary, parts, x_hat, latents, f.detach() > 0, self.d_sae
        )


class _GatedFeatures(torch.autograd.Function):
    """P = x̃ W_gate [B, M] -> (f = 1[π_gate > 0] ⊙ ReLU(π_mag), ReLU(π_gate)), with
    π_gate = P + b_gate and π_mag = exp(r_mag) ⊙ P + b_mag, in a few passes over [B, M]:

        ∂L/∂π_mag = ∂L/∂f ⊙ 1[f > 0],  ∂L/∂π_gate = ∂L/∂ReLU(π_gate) ⊙ 1[π_gate > 0]
        ∂L/∂P = ∂L/∂π_gate + exp(r_mag) ⊙ ∂L/∂π_mag
        ∂L/∂r_mag = exp(r_mag) ⊙ Σ_b P ⊙ ∂L/∂π_mag = Σ_b f ⊙ ∂L/∂π_mag − b_mag ⊙ ∂L/∂b_mag

    (the last since exp(r_mag) ⊙ P = π_mag − b_mag = f − b_mag wherever ∂L/∂π_mag ≠ 0), so
    the backward keeps f, which the decoder keeps anyway, and one bool mask; not P.
    """

    @staticmethod
    def forward(ctx, projected: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor):
        scale = torch.exp(r_mag).to(projected.dtype)
        pi_mag = torch.addcmul(b_mag.to(projected.dtype), projected, scale)
        # π_gate in place of P: P is the encoder matmul's fresh output, read by nothing else.
        pi_gate = projected.add_(b_gate.to(projected.dtype))
        ctx.mark_dirty(projected)
        open_ = pi_gate > 0
        f = pi_mag.relu_().mul_(open_)
        ctx.save_for_backward(f, scale, open_, b_mag)
        ctx.dtypes = (b_gate.dtype, r_mag.dtype)
        return f, pi_gate.relu_()

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_gate: Tensor):
        f, scale, open_, b_mag = ctx.saved_tensors
        b_gate_dtype, r_mag_dtype = ctx.dtypes
        # Written into the incoming gradients where they are plain dense tensors: two
        # [B, M] temporaries fewer at the step's peak.
        grad_mag = overwritable(grad_f)
        torch.ops.aten.threshold_backward.grad_input(grad_mag, f, 0, grad_input=grad_mag)  # ⊙ 1[f > 0]
        grad_b_mag = grad_mag.sum(0).float()
        grad_r_mag = (grad_mag * f).sum(0).float() - b_mag.float() * grad_b_mag
        grad_pi_gate = overwritable(grad_gate).mul_(open_)
        grad_b_gate = grad_pi_gate.sum(0).float()
        grad_projected = grad_pi_gate.addcmul_(grad_mag, scale)
        return grad_projected, grad_b_gate.to(b_gate_dtype), grad_r_mag.to(r_mag_dtype), grad_b_mag.to(b_mag.dtype)


def gated_features(projected: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor) -> tuple[Tensor, Tensor]:
    """(f, ReLU(π_gate)) from P = x̃ W_gate: [B, M] each (see _GatedFeatures)."""
    return _GatedFeatures.apply(projected, b_gate, r_mag, b_mag)
