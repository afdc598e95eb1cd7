"""Sparse kernels for TopK-style codes: only the k active latents of each token are
decoded, and only they receive encoder gradient.

Dense TopK training costs three [B, d_in] × [d_in, d_sae] matmuls in the encoder and three
in the decoder. With k ≪ d_sae non-zeros per row, everything but the encoder's forward
matmul (needed to choose the top k) can be sparse:

    decode:   x̂_b = Σ_j v_bj W_dec[i_bj]                   (embedding_bag, weighted sum)
    backward: ∂L/∂W_dec[m] = Σ_{(b,j): i_bj = m} v_bj g_b   (embedding_bag's own backward)
              ∂L/∂W_enc[:, m] = Σ_{(b,j): i_bj = m} γ_bj x̃_b  (one sparse × dense matmul)
              ∂L/∂b_enc[m] = Σ_{(b,j): i_bj = m} γ_bj,  ∂L/∂b_dec ⊃ −W_enc ∂L/∂b_enc

with γ_bj the gradient reaching the selected pre-activation. ``dense_topk_reference``
is the plain-PyTorch computation the tests compare these against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(reference: Tensor) -> torch.dtype:
    """bf16 inside a bf16 autocast region, else the parameter's own dtype."""
    device = reference.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return reference.dtype


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """values, indices: [B, k]; W_dec: [d_sae, d_in] -> Σ_j values[b, j] W_dec[indices[b, j]]: [B, d_in] (no b_dec)."""
    dtype = compute_dtype(W_dec)
    return F.embedding_bag(indices, W_dec.to(dtype), per_sample_weights=values.to(dtype), mode="sum")


class _SelectTopK(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec) -> (ReLU of the k largest pre-activations [B, k], their indices [B, k]).

    The forward computes z = (x − b_dec) W_enc + b_enc densely (it must, to find the top k);
    the backward touches only the selected latents."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dtype: torch.dtype):
        centred = (x - b_dec).to(dtype)
        z = torch.addmm(b_enc.to(dtype), centred, W_enc.to(dtype))
        values, indices = z.topk(k, dim=-1, sorted=False)
        values = torch.relu(values)
        ctx.save_for_backward(centred, values, indices, W_enc)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        centred, values, indices, W_enc = ctx.saved_tensors
        batch, k = indices.shape
        d_sae = W_enc.shape[1]
        gamma = (grad_values * (values > 0)).float().reshape(-1)  # through the ReLU
        rows = indices.reshape(-1)
        grad_b_enc = torch.zeros(d_sae, dtype=torch.float32, device=gamma.device).index_add_(0, rows, gamma)
        # ∂L/∂W_encᵀ = Γᵀ x̃ with Γ [B, d_sae] holding γ at the selected entries: one sparse matmul.
        tokens = torch.arange(batch, device=rows.device).repeat_interleave(k)
        gamma_t = torch.sparse_coo_tensor(torch.stack([rows, tokens]), gamma, (d_sae, batch), check_invariants=False)
        grad_W_enc = torch.sparse.mm(gamma_t, centred.float()).t()
        grad_b_dec = -(W_enc.float() @ grad_b_enc)  # x̃ = x − b_dec
        return None, grad_W_enc.to(W_enc.dtype), grad_b_enc.to(W_enc.dtype), grad_b_dec.to(W_enc.dtype), None, None


def select_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k active latents of each token: (values ≥ 0 [B, k], indices [B, k])."""
    return _SelectTopK.apply(x, W_enc, b_enc, b_dec, k, compute_dtype(W_enc))


def dense_topk_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, W_dec: Tensor, k: int) -> Tensor:
    """x̂ of a TopK SAE computed densely with plain PyTorch ops (for tests)."""
    z = (x - b_dec) @ W_enc + b_enc
    top = z.topk(k, dim=-1)
    f = torch.zeros_like(z).scatter(-1, top.indices, torch.relu(top.values))
    return f @ W_dec + b_dec
