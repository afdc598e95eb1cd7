"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Anthropic's April 2024 update).

    f = ReLU((x − b_dec) W_enc + b_enc)
    L = ‖x̂ − x‖² + λ Σ_i f_i            decoder_norm="unit": rows of W_dec held at ‖d_i‖ = 1
    L = ‖x̂ − x‖² + λ Σ_i f_i ‖d_i‖      decoder_norm="weighted": W_dec free

The L1 term pulls every active feature's magnitude down (feature suppression); see
``relative_reconstruction_bias`` in saekit.evaluate and the fix in saekit.fit_scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder, overwritable
from .config import SAEConfig
from .selection import positive_entries
from .sparse_decode import select_entries


class ReluSAE(SparseAutoencoder):
    arch = "relu"
    summary = "ReLU((x − b_dec) W_enc + b_enc); λ Σ f_i with unit-norm decoder rows, or λ Σ f_i ‖d_i‖"
    coefficient_name = "l1_coefficient"
    options = ("decoder_norm",)

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.decoder_norm == "unit"

    @classmethod
    def default_coefficient(cls) -> float:
        return 1.0

    @torch.no_grad()
    def calibrate(self, sample: Tensor) -> None:
        if self.cfg.target_l0 is not None:
            self.b_enc.sub_(self.firing_quantiles(self.pre_activations(sample)))

    @torch.no_grad()
    def shift_thresholds(self, rate: Tensor) -> None:
        self._scale_threshold_bias(self.b_enc, rate)

    def firing_margins(self, x: Tensor, floor: float) -> Tensor:
        """x̃ W_enc fires where it exceeds −b_enc: the margin is log(x̃ W_enc / −b_enc)."""
        return self._margins(x, torch.zeros_like(self.b_enc), -self.b_enc, floor)

    def encode(self, x: Tensor) -> Tensor:
        return self.pre_activations(x).relu_()  # in place: z itself is needed by nobody

    def loss(self, x: Tensor, *, target: Tensor | None = None, sparsity_scale: float = 1.0) -> LossOutput:
        target = x if target is None else target
        if self.train_sparsely(x):
            return self._sparse_loss(x, target, sparsity_scale)
        f, per_feature = relu_with_column_sums(self.pre_activations(x))
        x_hat = self.predict(x, self.decode(f))
        reconstruction = self.reconstruction_error(target, x_hat)
        # Σ_t Σ_i f_ti (‖d_i‖) / B, from the per-feature sums over tokens.
        if not self.unit_norm_decoder:
            per_feature = per_feature * self.decoder_norms()
        sparsity = self.coefficient(sparsity_scale) * per_feature.sum() / f.shape[0]
        parts = {"reconstruction": reconstruction, "sparsity": sparsity}
        return LossOutput.from_features(reconstruction + sparsity, parts, f, x_hat)

    def _sparse_loss(self, x: Tensor, target: Tensor, sparsity_scale: float) -> LossOutput:
        """The same loss from f's non-zeros alone, which are z's positive entries."""
        active = select_entries(x, self.W_enc, self.b_enc, self.centre, positive_entries)
        x_hat = self.predict(x, self.decode_sparse(active))
        reconstruction = self.reconstruction_error(target, x_hat)
        per_entry = active.values.float()
        if not self.unit_norm_decoder:
            per_entry = per_entry * self.decoder_norms()[active.indices]
        sparsity = self.coefficient(sparsity_scale) * per_entry.sum() / x.shape[0]
        parts = {"reconstruction": reconstruction, "sparsity": sparsity}
        return LossOutput.from_entries(
            reconstruction + sparsity, parts, x_hat, active.indices, active.values.detach() > 0, self.d_sae
        )


class _ReluWithColumnSums(torch.autograd.Function):
    """z: [B, M] -> (f = ReLU(z) computed in place, Σ_b f_b: [M] float32).

    The L1 penalty's gradient is one value per feature, so the backward adds it to the
    decoder's gradient and masks once, ∂L/∂z = (∂L/∂f + ∂L/∂Σf) ⊙ 1[f > 0], instead of
    materialising the penalty's [B, M] gradient and accumulating it separately."""

    @staticmethod
    def forward(ctx, z: Tensor):
        f = z.relu_()
        ctx.mark_dirty(z)
        ctx.save_for_backward(f)
        # The CPU accumulates a bf16 sum in float32; asking for a float32 result would copy f.
        return f, f.sum(0).float()

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_sums: Tensor):
        (f,) = ctx.saved_tensors
        # In place where grad_f is a plain dense tensor (the decoder backward's fresh
        # product, used by nothing else): a [B, M] temporary fewer lowers the step's peak.
        grad = overwritable(grad_f).add_(grad_sums.to(grad_f.dtype))
        return torch.ops.aten.threshold_backward.grad_input(grad, f, 0, grad_input=grad)


def relu_with_column_sums(z: Tensor) -> tuple[Tensor, Tensor]:
    """(ReLU(z) [B, M], its sums over the batch [M] float32), with the fused backward above."""
    return _ReluWithColumnSums.apply(z)
