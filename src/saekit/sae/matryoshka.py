"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; Nabeshima 2024).

The latents are cut into G consecutive groups; prefix m is the dictionary of groups 0..m.
Selection is BatchTopK's over all latents, and every prefix must reconstruct x on its own:

    x̂_m = Σ_{i in groups ≤ m} f_i d_i + b_dec
    L = Σ_m w_m ‖x − x̂_m‖² + AuxK          (w_m = 1/G by default: the mean of the prefix errors)

so the first groups learn general features and later ones refine them, instead of
absorbing them. The decode is one sparse decode per group (the entries split, so the work
is that of one decode) and a running sum over the groups. At inference it is a BatchTopK
SAE: z ⊙ 1[z > θ] with its running threshold θ (a JumpReLU; saekit.convert makes that exact).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batchtopk import BatchTopKSAE
from .config import ConfigError, SAEConfig
from .sparse_decode import sparse_decode


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
        prefixes = self.prefix_decodes(x, active)
        errors = [self.reconstruction_error(target, x_hat) for x_hat in prefixes]
        return sum(w * e for w, e in zip(self.group_weights, errors)), prefixes[-1]

    def prefix_decodes(self, x: Tensor, active) -> list[Tensor]:
        """x̂_m for every prefix m: [B, d_out] each, from one sparse decode per group."""
        values, indices, offsets = active.values, active.indices, active.offsets
        batch = x.shape[0]
        counts = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))
        tokens = torch.arange(batch, device=indices.device).repeat_interleave(counts)
        boundaries = torch.tensor(self.group_ends[:-1], device=indices.device)
        groups = torch.bucketize(indices, boundaries, right=True)
        if self.cfg.feature_scale:
            values = values * self.feature_scale[indices]
        running = None
        prefixes = []
        for g in range(len(self.group_ends)):
            mask = groups == g
            group_tokens = tokens[mask]
            group_counts = torch.bincount(group_tokens, minlength=batch)
            part = sparse_decode(values[mask], indices[mask], self.W_dec, torch.cumsum(group_counts, 0) - group_counts)
            running = part if running is None else running + part
            prefixes.append(self.predict(x, running + self.b_dec))
        return prefixes
