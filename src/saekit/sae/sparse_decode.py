"""Sparse kernels for TopK-style codes: only the k active latents of each token are
decoded, and only they receive encoder gradient.

Dense TopK training costs three [B, d_in] × [d_in, d_sae] matmuls in the encoder and three
in the decoder. With k ≪ d_sae non-zeros per row, everything but the encoder's forward
matmul (needed to choose the top k) can be sparse:

    decode:   x̂_b = Σ_j v_bj W_dec[i_bj]                   (embedding_bag, weighted sum)
    backward: ∂L/∂v_bj = ⟨g_b, W_dec[i_bj]⟩                  (a sampled dense × dense product)
              ∂L/∂W_dec[m] = Σ_{(b,j): i_bj = m} v_bj g_b   (sparse × dense)
              ∂L/∂W_enc[:, m] = Σ_{(b,j): i_bj = m} γ_bj x̃_b  (sparse × dense)
              ∂L/∂b_enc[m] = Σ_{(b,j): i_bj = m} γ_bj,  ∂L/∂b_dec ⊃ −W_enc ∂L/∂b_enc

with g_b = ∂L/∂x̂_b and γ_bj the gradient reaching the selected pre-activation. On CPU the
two sparse × dense products are CSR matmuls over the latent-major pattern (MKL; about 4×
faster than embedding_bag's backward, which sorts and scatters, or than a COO product);
on other devices embedding_bag's own backward and COO products do the same sums.
tests/test_reference.py compares losses and gradients with dense plain-PyTorch
references written from the papers.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .selection import batch_topk_entries, row_topk

# The CSR products used here are stable in every torch this package supports; the
# warning would reach users once per process and ask nothing of them.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


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
    if W_dec.device.type == "cpu":
        return _SparseDecode.apply(values, indices, W_dec, offsets, dtype)
    if W_dec.is_cuda and dtype == torch.bfloat16:
        # CUDA's embedding_bag has no bf16 backward for per-sample weights (torch 2.11);
        # the gather is memory-bound and reads float32 master weights anyway.
        dtype = torch.float32
    return _embedding_bag_in_chunks(values.to(dtype), indices, W_dec.to(dtype), offsets)


GATHER_LIMIT = 2**30
"""Most entries × d_in one embedding_bag call gathers off the CPU. A forced sparse ReLU
step at 16,384 tokens × L0 64 × d_in 2304 (2.4·10⁹, past 2³¹) hit an illegal memory
access in backward on an H200 (torch 2.11) where BatchTopK at half as many entries ran;
32-bit index arithmetic in the CUDA kernels is the suspect, so larger calls are split
by tokens."""


def _embedding_bag_in_chunks(values: Tensor, indices: Tensor, W_dec: Tensor, offsets: Tensor | None) -> Tensor:
    """F.embedding_bag(indices, W_dec, offsets, per_sample_weights=values, mode="sum"), in
    calls of at most GATHER_LIMIT entries × d_in each (whole tokens per call)."""
    per_call = max(1, GATHER_LIMIT // W_dec.shape[1])
    if indices.numel() <= per_call:
        return F.embedding_bag(indices, W_dec, offsets, per_sample_weights=values, mode="sum")
    if offsets is None:  # [B, k]: whole rows
        rows = max(1, per_call // indices.shape[1])
        return torch.cat(
            [
                F.embedding_bag(i, W_dec, per_sample_weights=v, mode="sum")
                for i, v in zip(indices.split(rows), values.split(rows))
            ]
        )
    bounds = torch.cat([offsets, offsets.new_tensor([indices.numel()])]).tolist()
    parts, first = [], 0
    while first < len(offsets):
        last = first + 1  # tokens [first, last) in this call: as many as fit, at least one
        while last < len(offsets) and bounds[last + 1] - bounds[first] <= per_call:
            last += 1
        start, stop = bounds[first], bounds[last]
        parts.append(
            F.embedding_bag(
                indices[start:stop],
                W_dec,
                offsets[first:last] - start,
                per_sample_weights=values[start:stop],
                mode="sum",
            )
        )
        first = last
    return torch.cat(parts)


def token_of_each_entry(indices: Tensor, offsets: Tensor | None) -> Tensor:
    """The token (bag) of each entry of an Active layout, flat [n]."""
    if offsets is None:
        batch, k = indices.shape
        return torch.arange(batch, device=indices.device).repeat_interleave(k)
    counts = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))
    return torch.arange(offsets.numel(), device=indices.device).repeat_interleave(counts)


def _sparse_rows_matmul(rows: Tensor, cols: Tensor, values: Tensor, n_rows: int, dense: Tensor) -> Tensor:
    """out[r] = Σ_{e: rows_e = r} values_e · dense[cols_e]: [n_rows, dense.shape[1]] float32,
    for n entries (rows, cols, values [n]) that may repeat a row but not a (row, col) pair."""
    shape = (n_rows, dense.shape[0])
    values, dense = values.float(), dense.float()
    if dense.device.type != "cpu":
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)
        return torch.sparse.mm(coo, dense)
    order = torch.argsort(rows, stable=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    csr = torch.sparse_csr_tensor(crow, cols[order], values[order], shape, check_invariants=False)
    return csr @ dense


class _SparseDecode(torch.autograd.Function):
    """(values, indices, W_dec, offsets) -> Σ_j values[b, j] W_dec[indices[b, j]]: [B, d_in],
    with the sparse backward of the module docstring (CPU)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor, offsets: Tensor | None, dtype: torch.dtype):
        ctx.save_for_backward(values, indices, W_dec, offsets)
        return F.embedding_bag(indices, W_dec.to(dtype), offsets, per_sample_weights=values.to(dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec, offsets = ctx.saved_tensors
        latents, tokens = indices.reshape(-1), token_of_each_entry(indices, offsets)
        g = grad_out.float()
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            # ⟨g_b, W_dec[i_bj]⟩ at the n selected (b, i_bj) only: a sampled [B, d] × [d, M] product.
            starts = offsets if offsets is not None else torch.arange(0, latents.numel(), indices.shape[1])
            crow = torch.cat([starts, starts.new_tensor([latents.numel()])])
            pattern = torch.sparse_csr_tensor(
                crow, latents, g.new_zeros(latents.numel()), (grad_out.shape[0], W_dec.shape[0]), check_invariants=False
            )
            dots = torch.sparse.sampled_addmm(pattern, g, W_dec.float().t(), beta=0.0).values()
            grad_values = dots.view_as(values).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W_dec = _sparse_rows_matmul(latents, tokens, values.reshape(-1), W_dec.shape[0], g).to(W_dec.dtype)
        return grad_values, None, grad_W_dec, None, None


def _encoder_gradients(
    centred: Tensor, gamma: Tensor, latents: Tensor, tokens: Tensor, W_enc: Tensor, centre: Tensor | None
):
    """(∂L/∂W_enc, ∂L/∂b_enc, ∂L/∂centre) from γ [n], the gradient reaching the selected
    pre-activations z[tokens, latents]; only those latents' columns are touched."""
    d_sae = W_enc.shape[1]
    grad_b_enc = torch.zeros(d_sae, dtype=torch.float32, device=gamma.device).index_add_(0, latents, gamma)
    # ∂L/∂W_encᵀ = Γᵀ x̃ with Γ [B, d_sae] holding γ at the selected entries: one sparse matmul.
    grad_W_enc = _sparse_rows_matmul(latents, tokens, gamma, d_sae, centred).t()
    grad_centre = None if centre is None else (-(W_enc.float() @ grad_b_enc)).to(W_enc.dtype)  # x̃ = x − b_dec
    return grad_W_enc.to(W_enc.dtype), grad_b_enc.to(W_enc.dtype), grad_centre


def _centred(x: Tensor, centre: Tensor | None, dtype: torch.dtype) -> Tensor:
    """x̃ = x − centre (x itself when there is no centre), in ``dtype``."""
    return (x if centre is None else x - centre).to(dtype)


def _pre_activations(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(x̃ = x − centre, or x when there is no centre; z = x̃ W_enc + b_enc)."""
    centred = _centred(x, centre, dtype)
    return centred, torch.addmm(b_enc.to(dtype), centred, W_enc.to(dtype))


TOPK_ROWS = 512
"""Tokens per block of the CPU TopK forward (_topk_by_blocks_of_rows); measured at d_in 576,
d_sae 9,216: 64 rows 233 ms, 128 179, 256 181, 512 165, 1,024 176, the whole batch 200."""


class Aux(NamedTuple):
    """What AuxK asks of a selection: the latents it may pick (the dead ones, [n_dead]) and
    how many per token (k ≤ n_dead)."""

    latents: Tensor
    k: int


def _aux_pick(z: Tensor, aux: Aux) -> tuple[Tensor, Tensor]:
    """ReLU of each row's aux.k largest pre-activations among aux.latents, and their latents
    ([rows, aux.k] each): AuxK's selection, read off the z the main selection was made from.
    With a quarter of the latents or more dead, the whole rows are searched (row_topk) with
    the live latents at −inf, faster than gathering the dead columns for torch.topk (7,848
    of 9,216 dead at 512 tokens: the AuxK step 90 against 350 ms over the plain one, with
    its encoder matmul, before AuxK read the main z). It may overwrite z: its callers have
    made their own selection from it first."""
    if 4 * aux.latents.numel() >= z.shape[-1]:
        live = torch.ones(z.shape[-1], dtype=torch.bool, device=z.device).index_fill_(0, aux.latents, False)
        values, latents = row_topk(z.masked_fill_(live, -math.inf), aux.k)
        return torch.relu(values), latents
    values, positions = z.index_select(1, aux.latents).topk(aux.k, dim=-1, sorted=False)
    return torch.relu(values), aux.latents[positions]


def _no_aux(device: torch.device) -> tuple[Tensor, Tensor]:
    return torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device)


def _topk_by_blocks_of_rows(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, k: int, dtype: torch.dtype, aux: Aux | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(x̃, the k largest pre-activations of each token [B, k], their latents [B, k], and
    AuxK's picks and latents [B, aux.k]), z computed TOPK_ROWS tokens at a time into one
    buffer."""
    centred = _centred(x, centre, dtype)
    W, b = W_enc.to(dtype), b_enc.to(dtype)
    batch = x.shape[0]
    values = torch.empty((batch, k), dtype=dtype)
    indices = torch.empty((batch, k), dtype=torch.long)
    aux_values, aux_indices = _no_aux(x.device)
    if aux is not None:
        aux_values = torch.empty((batch, aux.k), dtype=dtype)
        aux_indices = torch.empty((batch, aux.k), dtype=torch.long)
    buffer = torch.empty((min(TOPK_ROWS, batch), W.shape[1]), dtype=dtype)
    for start in range(0, batch, TOPK_ROWS):
        rows = slice(start, min(start + TOPK_ROWS, batch))
        z = torch.addmm(b, centred[rows], W, out=buffer[: rows.stop - start])
        values[rows], indices[rows] = row_topk(z, k)
        if aux is not None:
            aux_values[rows], aux_indices[rows] = _aux_pick(z, aux)
    return centred, values, indices, aux_values, aux_indices


def _merge_aux(
    main: tuple[Tensor, Tensor, Tensor], extra: tuple[Tensor, Tensor, Tensor], d_sae: int, main_sorted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The entries (γ, latents, tokens) of the main selection and of AuxK's as one list for
    the sparse encoder gradients. A dead latent may also be in a token's main selection
    (it fires again in this batch); that AuxK entry adds its γ to the main one and is
    dropped, since the sparse products take each (token, latent) pair once.
    ``main_sorted``: the main entries are already in (token, latent) order."""
    gamma, latents, tokens = main
    aux_gamma, aux_latents, aux_tokens = extra
    if latents.numel():
        keys = tokens * d_sae + latents
        order = None
        if not main_sorted:
            keys, order = keys.sort()
        aux_keys = aux_tokens * d_sae + aux_latents
        at = torch.searchsorted(keys, aux_keys).clamp_(max=keys.numel() - 1)
        same = keys[at] == aux_keys
        if bool(same.any()):
            gamma = gamma.index_add(0, at[same] if order is None else order[at[same]], aux_gamma[same])
            keep = ~same
            aux_gamma, aux_latents, aux_tokens = aux_gamma[keep], aux_latents[keep], aux_tokens[keep]
    return torch.cat([gamma, aux_gamma]), torch.cat([latents, aux_latents]), torch.cat([tokens, aux_tokens])


def _gamma(grad: Tensor | None, values: Tensor, *, through_relu: bool = True) -> Tensor:
    """The gradient reaching the selected pre-activations, flat: through the ReLU, or with
    ``through_relu=False`` straight past it (AuxK's picks, ``_aux_gamma``)."""
    if grad is None:
        return torch.zeros(values.numel(), dtype=torch.float32, device=values.device)
    return (grad * (values > 0) if through_relu else grad).float().reshape(-1)


def _with_aux_entries(
    entries: tuple[Tensor, Tensor, Tensor],
    ctx,
    grad_aux_values: Tensor | None,
    aux_values: Tensor,
    aux_indices: Tensor,
    d_sae: int,
    main_sorted: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The main selection's entries (γ, latents, tokens), with AuxK's picks merged in when the
    forward made them (_merge_aux)."""
    if not ctx.with_aux:
        return entries
    extra = (_aux_gamma(grad_aux_values, aux_values), aux_indices.reshape(-1), token_of_each_entry(aux_indices, None))
    return _merge_aux(entries, extra, d_sae, main_sorted)


def _aux_gamma(grad: Tensor | None, values: Tensor) -> Tensor:
    """The gradient reaching AuxK's picks, flat: straight through the ReLU, so that a pick
    whose pre-activation is negative (it decodes nothing) still learns to rise where its
    decoder row points along the residual. Through the ReLU, a latent whose pre-activations
    had gone negative on every token got no gradient from AuxK at all and stayed dead for
    good. TopK on the demo's store (k 32, 4,608 latents, 2,000 steps, seed 0) ended with 6
    latents that fired on none of 200,000 training rows, silent for the last 0.85M-4.5M
    tokens; 4 had a negative largest pre-activation on 8,192 held-out rows, the other 2 one
    below 0.25 (a token's 32nd largest: 0.46 at the median). Straight through: none, every
    latent fired within the last 28,672 tokens, at the same held-out FVU (0.0610 against
    0.0609). Latents that fire on none of the 32,768 held-out rows because they are rare were
    about as many (14 against 11)."""
    return _gamma(grad, values, through_relu=False)


class _SelectTopK(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec, k, dtype, aux) -> (ReLU of the k largest pre-activations [B, k],
    their indices [B, k], and AuxK's: ReLU of the aux.k largest among aux.latents [B, aux.k]
    and their indices; empty without ``aux``). AuxK's gradient passes its ReLU straight
    through (``_aux_gamma``).

    The forward computes z = (x − b_dec) W_enc + b_enc densely (it must, to choose); the
    backward touches only the selected latents. AuxK picks from the same z, so that it costs
    no second encoder matmul over the dead latents' columns (nor the gather of those
    columns and a dense gradient for it), and its entries join the main ones in one set of
    sparse gradient products. On CPU z is made and searched TOPK_ROWS tokens at a time in
    one reused buffer: the [B, d_sae] matrix never exists whole, and each block is still in
    cache when row_topk reads it (d_in 576, d_sae 9,216, 4,096 tokens: matmul and selection
    165 against 200 ms, 151 MB less at the step's peak)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, centre, k: int, dtype: torch.dtype, aux: Aux | None):
        if x.device.type == "cpu":
            centred, values, indices, aux_values, aux_indices = _topk_by_blocks_of_rows(
                x, W_enc, b_enc, centre, k, dtype, aux
            )
        else:
            centred, z = _pre_activations(x, W_enc, b_enc, centre, dtype)
            values, indices = row_topk(z, k)
            aux_values, aux_indices = _no_aux(z.device) if aux is None else _aux_pick(z, aux)
        values = torch.relu(values)
        ctx.save_for_backward(centred, values, indices, W_enc, centre, aux_values, aux_indices)
        ctx.with_aux = aux is not None
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):
        centred, values, indices, W_enc, centre, aux_values, aux_indices = ctx.saved_tensors
        entries = (_gamma(grad_values, values), indices.reshape(-1), token_of_each_entry(indices, None))
        entries = _with_aux_entries(entries, ctx, grad_aux_values, aux_values, aux_indices, W_enc.shape[1], False)
        return None, *_encoder_gradients(centred, *entries, W_enc, centre), None, None, None


class _SelectEntries(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec, choose, dtype, aux) -> the pre-activations z = (x − b_dec)
    W_enc + b_enc at the entries ``choose(z)`` picks, flat (values [n], latent indices [n],
    token of each [n], in token order), and AuxK's picks as _SelectTopK makes them (empty
    without ``aux``), with the sparse backward: the entries' values carry the gradient."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, centre, choose, dtype: torch.dtype, aux: Aux | None):
        centred, z = _pre_activations(x, W_enc, b_enc, centre, dtype)
        values, indices, tokens = choose(z)
        aux_values, aux_indices = _no_aux(z.device) if aux is None else _aux_pick(z, aux)
        del z
        ctx.save_for_backward(centred, indices, tokens, W_enc, centre, aux_values, aux_indices)
        ctx.with_aux = aux is not None
        ctx.mark_non_differentiable(indices, tokens, aux_indices)
        return values, indices, tokens, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, _grad_tokens, grad_aux_values, _grad_aux_indices):
        centred, indices, tokens, W_enc, centre, aux_values, aux_indices = ctx.saved_tensors
        gamma = grad_values.float() if grad_values is not None else torch.zeros(indices.shape, device=indices.device)
        entries = _with_aux_entries(
            (gamma, indices, tokens), ctx, grad_aux_values, aux_values, aux_indices, W_enc.shape[1], True
        )
        return None, *_encoder_gradients(centred, *entries, W_enc, centre), None, None, None


def select_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, k: int, aux: Aux | None = None
) -> tuple[Active, Active | None]:
    """The k active latents of each token (values ≥ 0 [B, k], indices [B, k]) of
    z = (x − centre) W_enc + b_enc (centre None: x W_enc + b_enc), and with ``aux`` AuxK's
    aux.k picks among aux.latents per token (ReLU'd, [B, aux.k]), else None."""
    values, indices, aux_values, aux_indices = _SelectTopK.apply(x, W_enc, b_enc, centre, k, compute_dtype(W_enc), aux)
    return Active(values, indices), (None if aux is None else Active(aux_values, aux_indices))


def _select_entries(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, choose, aux: Aux | None
) -> tuple[Active, Active | None]:
    values, indices, tokens, aux_values, aux_indices = _SelectEntries.apply(
        x, W_enc, b_enc, centre, choose, compute_dtype(W_enc), aux
    )
    counts = torch.bincount(tokens, minlength=x.shape[0])
    active = Active(values, indices, torch.cumsum(counts, 0) - counts)
    return active, (None if aux is None else Active(aux_values, aux_indices))


def select_entries(x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, choose) -> Active:
    """The pre-activations at the entries ``choose`` picks (see _SelectEntries), in the flat layout."""
    return _select_entries(x, W_enc, b_enc, centre, choose, None)[0]


def select_batch_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, k: int, aux: Aux | None = None
) -> tuple[Active, Active | None]:
    """BatchTopK's active latents, in the flat layout (see batch_topk_entries), and AuxK's
    picks as select_topk makes them."""
    return _select_entries(x, W_enc, b_enc, centre, partial(batch_topk_entries, k=k), aux)
