"""TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") and BatchTopK
(Bussmann et al. 2024) SAEs.

    z = (x − b_dec) W_enc + b_enc
    TopK:      f = ReLU(z) on the k largest entries of each token's z, 0 elsewhere
    BatchTopK: f = ReLU(z) on the k·B largest entries of the whole batch [B, d_sae]
               (entries tied with the k·B-th are all kept)

Both train sparsely (sparse_decode.py): only the selected latents are decoded and
receive encoder gradient; BatchTopK finds its selection among each token's few largest
pre-activations without sorting the whole batch.

BatchTopK keeps a running threshold θ, the smallest activation it kept, averaged over
steps; in eval mode it encodes each token alone as f = z ⊙ 1[z > θ] (a JumpReLU).

AuxK: the residual e = x − x̂ (gradient stopped) is reconstructed from the aux_k largest
pre-activations among dead latents, ê = f_aux W_dec, and ‖e − ê‖² is added with weight
aux_coefficient, scaled down while fewer than aux_k latents are dead. It gives dead
latents a gradient that points them at what the live ones miss.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder
from .config import SAEConfig
from .sparse_decode import Active, batch_topk_entries, select_batch_topk, select_topk, sparse_decode


class TopKSAE(SparseAutoencoder):
    arch = "topk"

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))

    @property
    def aux_k(self) -> int:
        return self.cfg.aux_k or min(self.d_in // 2, self.d_sae)

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        values, indices = z.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter_(-1, indices, torch.relu(values))

    def select(self, x: Tensor) -> Active:
        """Training-time active latents, with the sparse backward of sparse_decode.py."""
        return select_topk(x, self.W_enc, self.b_enc, self.b_dec, self.cfg.k)

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0) -> LossOutput:
        active = self.select(x)
        x_hat = self.decode_sparse(active)
        reconstruction = self.reconstruction_error(x, x_hat)
        parts = {"reconstruction": reconstruction}
        total = reconstruction
        auxiliary = self.auxk_loss(x, (x - x_hat).detach())
        if auxiliary is not None:
            parts["auxiliary"] = auxiliary
            total = total + auxiliary
        return LossOutput.from_entries(total, parts, x_hat, active.indices, active.values.detach() > 0, self.d_sae)

    def auxk_loss(self, x: Tensor, residual: Tensor) -> Tensor | None:
        """‖e − ê‖² with ê decoded from the aux_k largest pre-activations of dead latents;
        only the dead latents' columns of W_enc are multiplied."""
        dead = torch.nonzero(self.dead_mask()).flatten()
        n_dead = dead.numel()
        if n_dead == 0 or self.cfg.aux_coefficient == 0:
            return None
        k_aux = min(self.aux_k, n_dead)
        z_dead = x @ self.W_enc[:, dead] + (self.b_enc[dead] - self.b_dec @ self.W_enc[:, dead])
        values, positions = z_dead.topk(k_aux, dim=-1, sorted=False)
        residual_hat = sparse_decode(torch.relu(values), dead[positions], self.W_dec)
        error = (residual_hat.float() - residual.float()).pow(2)
        per_token = error.sum(-1) if self.cfg.reconstruction_loss == "sum" else error.mean(-1)
        return self.cfg.aux_coefficient * min(n_dead / self.aux_k, 1.0) * per_token.mean()


class BatchTopKSAE(TopKSAE):
    arch = "batchtopk"

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        # Inference threshold θ (a scalar shared by every feature), saved with the weights.
        self.register_buffer("threshold", torch.tensor(0.0))

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        if self.training:
            return self.select_batch(z)
        return z * (z > self.threshold).to(z.dtype)

    def select_batch(self, z: Tensor) -> Tensor:
        """f for the whole batch: the entries of ReLU(z) at or above the (k·B)-th largest, [B, d_sae]."""
        values, indices, tokens = batch_topk_entries(z, self.cfg.k)
        f = torch.zeros_like(z)
        f[tokens, indices] = values
        return f

    def select(self, x: Tensor) -> Active:
        active = select_batch_topk(x, self.W_enc, self.b_enc, self.b_dec, self.cfg.k)
        self._update_threshold(active.values)
        return active

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        """θ ← m θ + (1 − m) (smallest kept activation); the first batch sets θ; a batch that
        kept nothing leaves it. Tensor operations only, so a GPU is not waited for."""
        if values.numel() == 0:
            return
        smallest = torch.where(values > 0, values, torch.inf).amin().float()
        m = self.cfg.batchtopk_threshold_momentum
        updated = torch.where(self.threshold == 0, smallest, m * self.threshold + (1 - m) * smallest)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), updated, self.threshold))
