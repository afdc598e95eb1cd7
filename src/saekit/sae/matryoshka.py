"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; Nabeshima 2024).

The latents are cut into G consecutive groups; prefix m is the dictionary of groups 0..m.
Selection is BatchTopK's over all latents, and every prefix must reconstruct x on its own:

    x̂_m = Σ_{i in groups ≤ m} f_i d_i + b_dec
    L = Σ_m w_m ‖x − x̂_m‖² + AuxK          (w_m = 1/G by default: the mean of the prefix errors)

so the first groups learn general features and later ones refine them, instead of
absorbing them. The decode is one sparse decode whose bags are (group, token) pairs (the
work of one decode) and a running sum over the groups. At inference it is a BatchTopK
SAE: z ⊙ 1[z > θ] with its running threshold θ (a JumpReLU; saekit.convert makes that exact).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batchtopk import BatchTopKSAE
from .config import ConfigError, SAEConfig
from .sparse_decode import sparse_decode, token_of_each_entry


def group_sizes(cfg: SAEConfig) -> list[int]:
    """The sizes of the nested groups, from group_sizes, group_fractions, or the default:
    four groups doubling in size (1, 2, 4, 8 fifteenths of d_sae)."""
    if cfg.group_sizes is not None:
        return list(cfg.group_sizes)
    fractions = cfg.group_fractions if cfg.group_fractions is not None else [1 / 15, 2 / 15, 4 / 15, 8 / 15]
    sizes = [max(1, int(round(f * cfg.d_sae))) for f in fractions[:-1]]
    sizes.append(cfg.d_sae - sum(sizes))
    return sizes


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    arch = "matryoshka_batchtopk"
    summary = "BatchTopK whose nested prefixes of latents each reconstruct x (Σ_m w_m ‖x − x̂_≤m‖²); AuxK"
    options = (*BatchTopKSAE.options, "group_sizes", "group_fractions", "group_weights")

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        super().check_config(cfg)
        if cfg.group_sizes is not None and cfg.group_fractions is not None:
            raise ConfigError("give group_sizes or group_fractions, not both.", field="group_sizes")
        if cfg.group_fractions is not None and abs(sum(cfg.group_fractions) - 1) > 1e-6:
            raise ConfigError(
                f"group_fractions must add up to 1, got {sum(cfg.group_fractions):g}.",
                field="group_fractions",
                value=cfg.group_fractions,
            )
        sizes = group_sizes(cfg)
        if sum(sizes) != cfg.d_sae or min(sizes) < 1:
            raise ConfigError(
                f"the groups {sizes} must be positive and add up to d_sae={cfg.d_sae}.",
                field="group_sizes",
                value=cfg.group_sizes,
            )
        if cfg.group_weights is not None and len(cfg.group_weights) != len(sizes):
            raise ConfigError(
                f"group_weights has {len(cfg.group_weights)} weights for {len(sizes)} groups.",
                field="group_weights",
                value=cfg.group_weights,
            )

    @property
    def group_ends(self) -> list[int]:
        """Where each prefix ends: the cumulative group sizes (the last is d_sae)."""
        ends, total = [], 0
        for size in group_sizes(self.cfg):
            total += size
            ends.append(total)
        return ends

    @property
    def group_weights(self) -> list[float]:
        weights = self.cfg.group_weights
        return list(weights) if weights is not None else [1 / len(self.group_ends)] * len(self.group_ends)

    def reconstruction_and_output(self, x: Tensor, target: Tensor, active) -> tuple[Tensor, Tensor]:
        """Σ_m w_m ‖y − ŷ_≤m‖², and the full dictionary's ŷ (the last prefix)."""
        parts = self.group_decodes(active, x.shape[0])
        level = self.predict(x, self.b_dec.expand(x.shape[0], -1)).float()  # b_dec (+ skip term)
        per_d = 1.0 if self.cfg.reconstruction_loss == "sum" else 1.0 / parts.shape[-1]
        target = target.float()
        errors, left = _PrefixErrors.apply(target - level, parts, per_d)
        weights = torch.tensor(self.group_weights, dtype=errors.dtype, device=errors.device)
        # ŷ = y − (what the whole dictionary leaves), for the statistics and AuxK (no gradient).
        return (errors * weights).sum(), target - left

    def group_decodes(self, active, batch: int) -> Tensor:
        """Σ_{i in group g} f_i d_i for every group g and token: [G, B, d_out] float32, from one
        sparse decode whose bags are the (group, token) pairs: the work of one decode and one
        gradient of W_dec. In float32 even under bf16 autocast, so that neither the parts nor
        their gradients are cast on the way to and from _PrefixErrors (bf16 parts: a step
        11% slower than BatchTopK's; a decode per group on masked entries, as before: 7-19%
        slower; this: within the runs' noise of BatchTopK, −2% and +5%, on
        benchmarks/train_throughput.py's bf16 rows)."""
        values, indices, offsets = active.values, active.indices, active.offsets
        n_groups = len(self.group_ends)
        tokens = token_of_each_entry(indices, offsets)
        boundaries = torch.tensor(self.group_ends[:-1], device=indices.device)
        bags = torch.bucketize(indices, boundaries, right=True) * batch + tokens
        order = torch.argsort(bags, stable=True)
        per_bag = torch.bincount(bags, minlength=n_groups * batch)
        if self.cfg.feature_scale:
            values = values * self.feature_scale[indices]
        with torch.autocast(indices.device.type, enabled=False):  # float32: see _PrefixErrors
            parts = sparse_decode(values[order].float(), indices[order], self.W_dec, torch.cumsum(per_bag, 0) - per_bag)
        return parts.view(n_groups, batch, -1)


class _PrefixErrors(torch.autograd.Function):
    """(r [B, d] float32, the groups' decodes P [G, B, d], c) -> (e [G], r − Σ_g P_g): e_m =
    c · mean_b ‖r − Σ_{g ≤ m} P_g‖², in passes over one [B, d] residual per group instead of
    autograd's [G, B, d] cumulative sum, differences and squares and their backward (with
    which a forward and backward took 424 ms against the per-group loop's 346 and BatchTopK's
    276 ms, in bf16 at d_in 576, d_sae 9,216, 4,096 tokens, k 32). The backward
    walks the groups from the last, adding each P_g back onto the residual it saved:
    ∂L/∂P_h = −(2c/B) Σ_{m ≥ h} ∂L/∂e_m · R_m, ∂L/∂r = (2c/B) Σ_m ∂L/∂e_m · R_m."""

    @staticmethod
    def forward(ctx, residual: Tensor, parts: Tensor, per_d: float):
        left = residual.clone()
        errors = residual.new_empty(parts.shape[0])
        with torch.autocast(residual.device.type, enabled=False):  # squared norms in float32
            for g in range(parts.shape[0]):
                left.sub_(parts[g])
                errors[g] = torch.linalg.vecdot(left, left).mean() * per_d
        ctx.save_for_backward(left, parts)
        ctx.per_d = per_d
        ctx.mark_non_differentiable(left)
        return errors, left

    @staticmethod
    def backward(ctx, grad_errors: Tensor, _grad_left):
        left, parts = ctx.saved_tensors
        residual = left.clone()
        scale = grad_errors.float() * (2 * ctx.per_d / left.shape[0])
        total = torch.zeros_like(left)
        grad_parts = torch.empty_like(parts)
        for g in reversed(range(parts.shape[0])):
            total.addcmul_(residual, scale[g])
            grad_parts[g].copy_(total).neg_()
            residual.add_(parts[g])
        return total, grad_parts, None
