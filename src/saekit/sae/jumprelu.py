"""JumpReLU SAE with an L0 penalty (Rajamanoharan et al. 2024, "Jumping Ahead"; the
Gemma Scope recipe).

    z = (x − b_dec) W_enc + b_enc
    f = JumpReLU_θ(z) = z ⊙ H(z − θ)
    L = ‖x − x̂‖² + λ Σ_i H(z_i − θ_i)

H has no useful derivative, so θ is trained with straight-through estimators that
use a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth ε:

    ∂JumpReLU_θ(z)/∂θ := −(θ/ε) K((z − θ)/ε),     ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε)

(z receives the ordinary gradient H(z − θ) through the JumpReLU and none through the
L0 term). θ is stored raw, not as a logarithm (under Adam at the weights' learning rate a
log-parameterised threshold barely moves), but Adam's step on it is applied in proportion
to θ (``JumpReluSAE.after_optimizer_step``, which says why), and θ is clamped at 0.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder, overwritable
from .config import SAEConfig
from .selection import entries_above
from .sparse_decode import select_entries

MAX_LOG_STEP = 1.0
"""The largest move of log θ_i that one optimiser step makes (``after_optimizer_step``);
a step on real data is a few percent."""


class _JumpReLUWithL0(torch.autograd.Function):
    """z: [B, M], θ: [M] -> (f = z ⊙ H(z − θ) [B, M], Σ_b Σ_i H(z − θ) as a float32 scalar).

    One function for both, so that forward and backward each walk [B, M] a few times
    instead of once per elementary op; the backward is the sum of both estimators:

        ∂L/∂z = ∂L/∂f ⊙ H(z − θ)
        ∂L/∂θ = −(1/ε) Σ_b K((z − θ)/ε) ⊙ (θ ⊙ ∂L/∂f + ∂L/∂count)

    It keeps for the backward only f (which the decoder keeps anyway; H(z − θ) is f ≠ 0,
    since θ ≥ 0) and the kernel's support as a bool mask, not z.
    """

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float, latents: Tensor | None, balance: Tensor | None):
        theta = threshold if latents is None else threshold[latents].to(z.dtype)
        active = z > theta
        near = (z - theta).abs_() < bandwidth / 2  # rectangle kernel K((z − θ)/ε) ≠ 0
        # f in place of z: z is the encoder matmul's (or the entry selection's) fresh output,
        # which nothing else reads; one [B, M] tensor fewer at the step's peak.
        f = z.mul_(active)
        ctx.mark_dirty(z)
        ctx.save_for_backward(f, threshold, near, latents)
        ctx.bandwidth = bandwidth
        ctx.balance = balance
        return f, torch.count_nonzero(active).float()

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_count: Tensor):
        f, threshold, near, latents = ctx.saved_tensors
        theta = threshold if latents is None else threshold[latents].to(grad_f.dtype)
        through = (grad_f * theta).mul_(near)
        if ctx.balance is not None:  # Σ_K θ ∂L/∂f and Σ_K ∂L/∂count: their ratio is λ's balance
            ctx.balance.add_(torch.stack([through.sum(dtype=torch.float32), near.sum() * grad_count.float()]))
        through.add_(grad_count.to(grad_f.dtype)).mul_(near)
        if latents is None:
            grad_threshold = through.sum(0).float()
        else:
            grad_threshold = torch.zeros(threshold.shape, dtype=torch.float32, device=through.device)
            grad_threshold.index_add_(0, latents, through.float())
        grad_threshold *= -1.0 / ctx.bandwidth
        del through
        # H(z − θ) is f > 0 (θ ≥ 0); written into grad_f when it is a plain dense tensor.
        grad_z = overwritable(grad_f)
        torch.ops.aten.threshold_backward.grad_input(grad_z, f, 0, grad_input=grad_z)
        return grad_z, grad_threshold.to(threshold.dtype), None, None, None


def jumprelu_with_l0(
    z: Tensor, threshold: Tensor, bandwidth: float, latents: Tensor | None = None, balance: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(JumpReLU_θ(z), number of active entries) with the straight-through gradients above;
    z: [B, M] with θ: [M], or the entries z: [n] of latents [n] with the whole θ: [M].

    ``balance``: a float32 [2] tensor to which the backward adds (Σ θ ∂L/∂f, Σ ∂L/∂count),
    both over the kernel's support: the reconstruction's and the penalty's pull on the
    thresholds, summed (``JumpReluSAE.penalty_balance``)."""
    return _JumpReLUWithL0.apply(z, threshold, bandwidth, latents, balance)


class JumpReluSAE(SparseAutoencoder):
    arch = "jumprelu"
    summary = "z ⊙ 1[z > θ], θ learned by straight-through estimators; λ Σ 1[z_i > θ_i] (L0)"
    coefficient_name = "l0_coefficient"
    threshold_kind = "per_feature"
    options = ("jumprelu_bandwidth", "jumprelu_init_threshold")

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold)))

    def _register_training_state(self) -> None:
        super()._register_training_state()
        # The backward's sums for penalty_balance; training state, not weights.
        self.register_buffer("_balance", torch.zeros(2), persistent=False)

    @classmethod
    def default_coefficient(cls) -> float:
        return 0.1

    @torch.no_grad()
    def calibrate(self, sample: Tensor) -> None:
        """θ starts at the quantile of each feature's pre-activations that target_l0 / d_sae of
        the tokens exceed, so the run starts at its target L0 instead of at about half of
        d_sae (θ is at least 0, as the clamp after each step keeps it)."""
        if self.cfg.target_l0 is not None:
            self.threshold.copy_(self.firing_quantiles(self.pre_activations(sample)).clamp_(min=0.0))

    @torch.no_grad()
    def shift_thresholds(self, rate: Tensor) -> None:
        self.threshold.mul_(torch.exp(rate).to(self.threshold.dtype))

    def firing_margins(self, x: Tensor, floor: float) -> Tensor:
        """z = x̃ W_enc + b_enc fires where z > θ: the margin is log(z / θ)."""
        return self._margins(x, self.b_enc, self.threshold, floor)

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        return z * (z > self.threshold).to(z.dtype)

    def loss(self, x: Tensor, *, target: Tensor | None = None, sparsity_scale: float = 1.0) -> LossOutput:
        target = x if target is None else target
        if self.train_sparsely(x):
            return self._sparse_loss(x, target, sparsity_scale)
        z = self.pre_activations(x)
        threshold = self.threshold.to(z.dtype)
        f, active = jumprelu_with_l0(z, threshold, self.cfg.jumprelu_bandwidth, balance=self._fresh_balance())
        x_hat = self.predict(x, self.decode(f))
        reconstruction = self.reconstruction_error(target, x_hat)
        sparsity = self.coefficient(sparsity_scale) * active / z.shape[0]
        parts = {"reconstruction": reconstruction, "sparsity": sparsity}
        return LossOutput.from_features(reconstruction + sparsity, parts, f, x_hat)

    def _sparse_loss(self, x: Tensor, target: Tensor, sparsity_scale: float) -> LossOutput:
        """The same loss from the entries z > θ − ε: every entry that is active or receives
        a straight-through gradient (z > θ − ε/2), with a margin for bf16 rounding."""
        floor = self.threshold.detach() - self.cfg.jumprelu_bandwidth
        entries = select_entries(x, self.W_enc, self.b_enc, self.centre, partial(entries_above, floor=floor))
        f, active = jumprelu_with_l0(
            entries.values, self.threshold, self.cfg.jumprelu_bandwidth, entries.indices, self._fresh_balance()
        )
        x_hat = self.predict(x, self.decode_sparse(entries._replace(values=f)))
        reconstruction = self.reconstruction_error(target, x_hat)
        sparsity = self.coefficient(sparsity_scale) * active / x.shape[0]
        parts = {"reconstruction": reconstruction, "sparsity": sparsity}
        return LossOutput.from_entries(
            reconstruction + sparsity, parts, x_hat, entries.indices, f.detach() > 0, self.d_sae
        )

    def _fresh_balance(self) -> Tensor:
        self._balance.zero_()
        return self._balance

    def penalty_balance(self) -> Tensor:
        """After the backward: the coefficient λ* at which the thresholds' gradients, summed
        over the kernel's support, cancel: Σ_K θ ∂L_rec/∂f + (λ*/λ) Σ_K ∂L_λ/∂count = 0.
        Returned as the [2] sums (Σ_K θ ∂L/∂f, Σ_K ∂L/∂count), which data-parallel ranks
        add before λ* = −λ · first / second is read off them (``L0Controller.update``)."""
        return self._balance

    def lr_scale_of(self, name: str) -> float:
        """θ learns √d_in times faster than the weights. Adam moves every parameter by about
        the learning rate a step, whatever its scale; encoder weights are O(1/√d_in) while
        thresholds live on the scale of pre-activations, O(1) for activations normalised to
        E‖x‖ = √d_in. At one learning rate θ could travel only ~lr a step, and a run that
        starts with half its features firing would need thousands of steps to reach a
        target L0 of tens. The step is then applied in proportion to θ_i (at θ̄, the median
        threshold, as it comes)."""
        return math.sqrt(self.d_in) if name == "threshold" else 1.0

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()
        self._threshold_before = self.threshold.detach().clone()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """θ moves by the optimiser's step in proportion to itself: Adam's step Δθ_i is
        applied as θ_i ← θ_i · exp(Δθ_i / θ̄), θ̄ the median positive threshold (the same
        move as θ_i + Δθ_i at θ_i = θ̄), then clamped at 0.

        Adam's steps are about equally long for every θ_i, while the target-L0 controller
        moves thresholds by a common factor (``shift_thresholds``). Raised by a factor and
        lowered by a fixed amount, θ_i = Δ/u is an unstable balance: each step, larger
        thresholds grow faster than the optimiser pulls them down and smaller ones fall to
        0, until the large ones fire on no token. That happens whenever λ is below its
        balance and the controller raises; on Gemma 3 270M layers.9.mlp_out (target L0 40,
        5,120 latents, 1,500 steps) λ fell below it after step 1,100, the 90th percentile
        of θ went from 0.6 to 5.7, 67% of the latents went silent and held-out FVU ended at
        0.213 (explained variance 0.939 at step 900). Steps in proportion to θ make both
        moves relative; the same run ends at FVU 0.068 with 0.08% dead
        (benchmarks/target_l0.py measures the controller with it). A threshold at 0 takes
        the plain step; none moves by more than a factor exp(±MAX_LOG_STEP) in one step
        (where θ̄ is tiny, as on one-dimensional data, Δθ / θ̄ is not)."""
        super().after_optimizer_step()
        before = getattr(self, "_threshold_before", None)
        if before is not None:
            self._threshold_before = None
            before = before.float()
            unit = torch.where(before > 0, before, float("nan")).nanmedian().nan_to_num(1.0)
            step = self.threshold.float() - before
            relative = (step / unit).clamp_(-MAX_LOG_STEP, MAX_LOG_STEP)
            self.threshold.copy_(torch.where(before > 0, before * torch.exp(relative), step))
        self.threshold.clamp_(min=0.0)
