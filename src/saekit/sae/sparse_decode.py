"""x̂ = Σ_j values[b, j] · W_dec[indices[b, j]] without materialising the dense f.

Dense decoding of a TopK code costs 2·B·d_sae·d_in FLOPs (and as much again twice in the
backward pass) for k ≪ d_sae non-zeros per row; the gather costs 2·B·k·d_in. The
backward pass scatters into the rows of W_dec that were used.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        rows = W_dec.to(values.dtype)[indices]  # [B, k, d_in]
        ctx.save_for_backward(values, indices, W_dec)
        return torch.bmm(values.unsqueeze(1), rows).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            rows = W_dec.to(grad.dtype)[indices]  # [B, k, d_in]
            grad_values = torch.bmm(rows, grad.unsqueeze(-1)).squeeze(-1).to(values.dtype)
        if ctx.needs_input_grad[2]:
            # dL/dW_dec[i] = Σ_{(b, j): indices[b, j] = i} values[b, j] · grad[b]
            contributions = (values.unsqueeze(-1) * grad.unsqueeze(1)).reshape(-1, grad.shape[-1])
            grad_W = torch.zeros_like(W_dec).index_add_(0, indices.reshape(-1), contributions.to(W_dec.dtype))
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """values, indices: [B, k]; W_dec: [d_sae, d_in] -> [B, d_in] (no b_dec)."""
    return _SparseDecode.apply(values, indices, W_dec)
