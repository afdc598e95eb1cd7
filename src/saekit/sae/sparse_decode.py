"""Sparse kernels for TopK-style codes: only the k active latents of each token are
decoded, and only they receive encoder gradient.

Dense TopK training costs three [B, d_in] × [d_in, d_sae] matmuls in the encoder and three
in the decoder. With k ≪ d_sae non-zeros per row, everything but the encoder's forward
matmul (needed to choose the top k) can be sparse:

    decode:   x̂_b = Σ_j v_bj W_dec[i_bj]                   (embedding_bag, weighted sum)
    backward: ∂L/∂W_dec[m] = Σ_{(b,j): i_bj = m} v_bj g_b   (embedding_bag's own backward)
              ∂L/∂W_enc[:, m] = Σ_{(b,j): i_bj = m} γ_bj x̃_b  (one sparse × dense matmul)
              ∂L/∂b_enc[m] = Σ_{(b,j): i_bj = m} γ_bj,  ∂L/∂b_dec ⊃ −W_enc ∂L/∂b_enc

with γ_bj the gradient reaching the selected pre-activation. tests/test_reference.py
compares losses and gradients with dense plain-PyTorch references written from the papers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(reference: Tensor) -> torch.dtype:
    """bf16 inside a bf16 autocast region, else the parameter's own dtype."""
    device = reference.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return reference.dtype


class Active(NamedTuple):
    """The active latents of a batch of B tokens, in one of two layouts:

    - per token, k each (TopK): values, indices [B, k]; ``offsets`` None;
    - flat (BatchTopK, a varying number per token): values, indices [n], grouped by
      token in order, token b's entries at [offsets[b], offsets[b + 1]).
    """

    values: Tensor
    indices: Tensor
    offsets: Tensor | None = None


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Σ_j values[b, j] W_dec[indices[b, j]]: [B, d_in] (no b_dec); ``offsets`` for the
    flat layout of ``Active``. W_dec: [d_sae, d_in]."""
    dtype = compute_dtype(W_dec)
    return F.embedding_bag(indices, W_dec.to(dtype), offsets, per_sample_weights=values.to(dtype), mode="sum")


def batch_topk_entries(z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK's selection without sorting [B, M]: the entries of ReLU(z) at or above τ,
    the (k·B)-th largest over the whole batch, as flat (values [n], latent indices [n],
    token indices [n]) ordered by token. Entries equal to τ are all kept, so the result
    does not depend on the order in which ties are visited.

    τ cannot be known before each token's share is, so take each token's c largest
    (c = 4k) and find τ among those. A token whose c candidates are all ≥ τ may have more
    beyond them: only such tokens look further (4× more candidates, up to M), and τ is
    found again over all candidates; τ can only rise, so finished tokens stay finished."""
    batch, d_sae = z.shape
    n_keep = min(k * batch, batch * d_sae)
    rows = torch.arange(batch, device=z.device)
    c = min(d_sae, 4 * k)
    finished: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows [r], values [r, c], indices [r, c])
    pending = (rows, *z.topk(c, dim=-1, sorted=False))
    while True:
        everything = torch.cat([group[1].flatten() for group in finished] + [pending[1].flatten()])
        tau = everything.topk(min(n_keep, everything.numel()), sorted=False).values.min().clamp_min(0)
        smallest = pending[1].amin(dim=-1)
        complete = (smallest < tau) | (smallest <= 0) | (c == d_sae)
        finished.append(tuple(t[complete] for t in pending))
        if bool(complete.all()):
            break
        left = pending[0][~complete]
        c = min(d_sae, 4 * c)
        pending = (left, *z[left].topk(c, dim=-1, sorted=False))
    values, indices, tokens = [], [], []
    for group_rows, group_values, group_indices in finished:
        keep = (group_values >= tau) & (group_values > 0)
        values.append(group_values[keep])
        indices.append(group_indices[keep])
        tokens.append(group_rows.unsqueeze(1).expand_as(group_values)[keep])
    tokens_flat = torch.cat(tokens)
    order = torch.argsort(tokens_flat, stable=True)
    return torch.cat(values)[order], torch.cat(indices)[order], tokens_flat[order]


def _encoder_gradients(centred: Tensor, gamma: Tensor, latents: Tensor, tokens: Tensor, W_enc: Tensor):
    """(∂L/∂W_enc, ∂L/∂b_enc, ∂L/∂b_dec) from γ [n], the gradient reaching the selected
    pre-activations z[tokens, latents]; only those latents' columns are touched."""
    d_sae = W_enc.shape[1]
    grad_b_enc = torch.zeros(d_sae, dtype=torch.float32, device=gamma.device).index_add_(0, latents, gamma)
    # ∂L/∂W_encᵀ = Γᵀ x̃ with Γ [B, d_sae] holding γ at the selected entries: one sparse matmul.
    gamma_t = torch.sparse_coo_tensor(torch.stack([latents, tokens]), gamma, (d_sae, centred.shape[0]),
                                      check_invariants=False)
    grad_W_enc = torch.sparse.mm(gamma_t, centred.float()).t()
    grad_b_dec = -(W_enc.float() @ grad_b_enc)  # x̃ = x − b_dec
    return grad_W_enc.to(W_enc.dtype), grad_b_enc.to(W_enc.dtype), grad_b_dec.to(W_enc.dtype)


def _pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    centred = (x - b_dec).to(dtype)
    return centred, torch.addmm(b_enc.to(dtype), centred, W_enc.to(dtype))


class _SelectTopK(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec) -> (ReLU of the k largest pre-activations [B, k], their indices [B, k]).

    The forward computes z = (x − b_dec) W_enc + b_enc densely (it must, to choose); the
    backward touches only the selected latents."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dtype: torch.dtype):
        centred, z = _pre_activations(x, W_enc, b_enc, b_dec, dtype)
        values, indices = z.topk(k, dim=-1, sorted=False)
        values = torch.relu(values)
        ctx.save_for_backward(centred, values, indices, W_enc)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        centred, values, indices, W_enc = ctx.saved_tensors
        batch, k = indices.shape
        gamma = (grad_values * (values > 0)).float().reshape(-1)  # through the ReLU
        tokens = torch.arange(batch, device=indices.device).repeat_interleave(k)
        return None, *_encoder_gradients(centred, gamma, indices.reshape(-1), tokens, W_enc), None, None


class _SelectBatchTopK(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec) -> BatchTopK's active entries, flat (values [n], latent
    indices [n], token of each [n]; see batch_topk_entries), with the sparse backward."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dtype: torch.dtype):
        centred, z = _pre_activations(x, W_enc, b_enc, b_dec, dtype)
        values, indices, tokens = batch_topk_entries(z, k)
        ctx.save_for_backward(centred, indices, tokens, W_enc)
        ctx.mark_non_differentiable(indices, tokens)
        return values, indices, tokens

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices, _grad_tokens):
        centred, indices, tokens, W_enc = ctx.saved_tensors
        return None, *_encoder_gradients(centred, grad_values.float(), indices, tokens, W_enc), None, None


def select_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> Active:
    """The k active latents of each token (values ≥ 0 [B, k], indices [B, k])."""
    values, indices = _SelectTopK.apply(x, W_enc, b_enc, b_dec, k, compute_dtype(W_enc))
    return Active(values, indices)


def select_batch_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> Active:
    """BatchTopK's active latents, in the flat layout (see batch_topk_entries)."""
    values, indices, tokens = _SelectBatchTopK.apply(x, W_enc, b_enc, b_dec, k, compute_dtype(W_enc))
    counts = torch.bincount(tokens, minlength=x.shape[0])
    return Active(values, indices, torch.cumsum(counts, 0) - counts)
