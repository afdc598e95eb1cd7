"""JumpReLU SAE with an L0 penalty (Rajamanoharan et al. 2024, "Jumping Ahead"; the
Gemma Scope recipe).

    z = (x − b_dec) W_enc + b_enc
    f = JumpReLU_θ(z) = z ⊙ H(z − θ)
    L = ‖x − x̂‖² + λ Σ_i H(z_i − θ_i)

H has no useful derivative, so θ is trained with straight-through estimators that
use a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth ε:

    ∂JumpReLU_θ(z)/∂θ := −(θ/ε) K((z − θ)/ε),     ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε)

(z receives the ordinary gradient H(z − θ) through the JumpReLU and none through the
L0 term). θ is stored raw, not as a logarithm: under Adam a log-parameterised threshold
barely moves. It is clamped at 0 after every step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder
from .config import SAEConfig


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > threshold).to(grad.dtype)
        grad_threshold = -(threshold / eps) * _rectangle((z - threshold) / eps) * grad
        return grad_z, grad_threshold.reshape(-1, z.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((z - threshold) / eps) * grad
        return torch.zeros_like(z), grad_threshold.reshape(-1, z.shape[-1]).sum(0), None


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return _JumpReLU.apply(z, threshold, bandwidth)


def step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return _Step.apply(z, threshold, bandwidth)


class JumpReluSAE(SparseAutoencoder):
    arch = "jumprelu"
    coefficient_name = "l0_coefficient"

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold)))

    @classmethod
    def default_coefficient(cls) -> float:
        return 0.1

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        return z * (z > self.threshold).to(z.dtype)

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0) -> LossOutput:
        z = self.pre_activations(x)
        threshold = self.threshold.to(z.dtype)
        f = jumprelu(z, threshold, self.cfg.jumprelu_bandwidth)
        x_hat = self.decode(f)
        reconstruction = self.reconstruction_error(x, x_hat)
        l0 = step(z, threshold, self.cfg.jumprelu_bandwidth).float().sum(-1).mean()
        sparsity = self.coefficient(sparsity_scale) * l0
        parts = {"reconstruction": reconstruction, "sparsity": sparsity}
        return LossOutput.from_features(reconstruction + sparsity, parts, f, x_hat)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)
