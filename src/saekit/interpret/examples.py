"""Examples of a feature firing, kept for every feature at once in bounded memory.

An *example* is one token on which a feature fired, with the window of tokens around it
(``before`` tokens before, ``after`` after, within its context) and the feature's
activation on each of them, so that a dashboard can colour the text.

``ExampleHeap`` keeps, for each of the d_sae features, the n examples with the largest
*key* seen so far: a bounded heap per feature, stored as [d_sae, n] tensors and merged
with one ``torch.topk`` per batch instead of millions of Python heap operations. With the
activation as key it keeps the top-activating examples; with an independent uniform
random key per firing it keeps a uniform random sample without replacement of each
feature's firings (priority sampling: the n largest of i.i.d. keys are a uniform
n-subset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class Example(NamedTuple):
    """One firing of one feature."""

    value: float
    """The feature's activation on the token."""
    context: int
    """Index of the token's context in the corpus (before any split)."""
    position: int
    """Position of the token in its context."""
    tokens: list[int]
    """Token ids of the window, the token itself at index ``before``; −1 outside the context."""
    acts: list[float]
    """The feature's activation on each token of the window (0 outside the context and
    on tokens outside the train mask)."""


@dataclass
class Examples:
    """n example slots per feature; a slot with ``context == −1`` is empty (the feature
    fired fewer than n times)."""

    values: Tensor
    """[d_sae, n] float32: activation on the example's token."""
    context: Tensor
    """[d_sae, n] int64: context index in the corpus, −1 for an empty slot."""
    position: Tensor
    """[d_sae, n] int64: position of the token in its context."""
    tokens: Tensor
    """[d_sae, n, W] int64: window token ids, W = before + 1 + after; −1 outside the context."""
    acts: Tensor
    """[d_sae, n, W] float32: the feature's activation on each window token."""
    before: int
    """Window tokens before the example's token (its index in the window)."""

    def of(self, feature: int) -> list[Example]:
        """The examples of one feature, in stored order, empty slots left out."""
        keep = (self.context[feature] >= 0).nonzero().flatten().tolist()
        return [
            Example(
                float(self.values[feature, j]),
                int(self.context[feature, j]),
                int(self.position[feature, j]),
                self.tokens[feature, j].tolist(),
                self.acts[feature, j].tolist(),
            )
            for j in keep
        ]

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}.{name}": getattr(self, name).contiguous()
            for name in ("values", "context", "position", "tokens", "acts")
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str, before: int) -> Examples:
        return cls(
            **{name: tensors[f"{prefix}.{name}"] for name in ("values", "context", "position", "tokens", "acts")},
            before=before,
        )


class ExampleHeap:
    """The n examples with the largest keys, for every feature at once."""

    def __init__(self, d_sae: int, n: int, before: int, after: int, device: torch.device | str = "cpu") -> None:
        if n < 0 or before < 0 or after < 0:
            raise ValueError(f"n, before and after must be ≥ 0, got n={n}, before={before}, after={after}.")
        width = before + 1 + after
        self.n, self.before = n, before
        self.offsets = torch.arange(-before, after + 1, device=device)  # [W]
        self.keys = torch.full((d_sae, n), float("-inf"), device=device)
        self.values = torch.zeros(d_sae, n, device=device)
        self.context = torch.full((d_sae, n), -1, dtype=torch.int64, device=device)
        self.position = torch.zeros(d_sae, n, dtype=torch.int64, device=device)
        self.tokens = torch.full((d_sae, n, width), -1, dtype=torch.int64, device=device)
        self.acts = torch.zeros(d_sae, n, width, device=device)

    @torch.no_grad()
    def push(self, keys: Tensor, f: Tensor, tokens: Tensor, context_index: Tensor) -> None:
        """Offer every (token, feature) of a batch of whole contexts.

        keys: [B·T, d_sae], −inf where the token is no candidate for the feature;
        f: [B, T, d_sae] activations; tokens: [B, T] ids; context_index: [B] corpus indices.
        """
        B, T, d_sae = f.shape
        n_take = min(self.n, B * T)
        if n_take == 0:
            return
        new_keys, flat = keys.topk(n_take, dim=0)  # [n_take, d_sae]: the batch's best per feature
        new_keys, flat = new_keys.t(), flat.t()  # [d_sae, n_take]
        b, t = flat // T, flat % T
        feature = torch.arange(d_sae, device=f.device)[:, None]
        window = t[..., None] + self.offsets  # [d_sae, n_take, W]
        inside = (window >= 0) & (window < T)
        window = window.clamp(0, T - 1)
        rows = b[..., None].expand_as(window)
        new = {
            "values": f[b, t, feature],
            "context": context_index.to(f.device)[b],
            "position": t,
            "tokens": torch.where(inside, tokens.to(f.device)[rows, window], -1),
            "acts": torch.where(inside, f[rows, window, feature[..., None]], 0.0),
        }
        merged_keys, pick = torch.cat([self.keys, new_keys], dim=1).topk(self.n, dim=1)  # [d_sae, n]
        self.keys = merged_keys
        for name, fresh in new.items():
            both = torch.cat([getattr(self, name), fresh.to(getattr(self, name).dtype)], dim=1)
            index = pick if both.ndim == 2 else pick[..., None].expand(-1, -1, both.shape[2])
            setattr(self, name, both.gather(1, index))

    def result(self, order: str = "key") -> Examples:
        """The kept examples on the CPU, sorted by key ("key") or by activation ("value"),
        largest first; ties in order of (context, position). Empty slots come last."""
        if order not in ("key", "value"):
            raise ValueError(f"order must be 'key' or 'value', got {order!r}.")
        empty = torch.isneginf(self.keys)  # never filled, or filled by a non-candidate
        primary = torch.where(empty, float("-inf"), self.keys if order == "key" else self.values)
        # Stable sorts: first by place in the corpus, then by the primary key.
        place = torch.where(empty, torch.iinfo(torch.int64).max, self.context * (1 << 32) + self.position)
        by_place = place.argsort(dim=1, stable=True)
        by_key = primary.gather(1, by_place).argsort(dim=1, descending=True, stable=True)
        index = by_place.gather(1, by_key)
        wide = index[..., None].expand_as(self.tokens)
        return Examples(
            values=torch.where(empty, 0.0, self.values).gather(1, index).cpu(),
            context=torch.where(empty, -1, self.context).gather(1, index).cpu(),
            position=torch.where(empty, 0, self.position).gather(1, index).cpu(),
            tokens=torch.where(empty[..., None], -1, self.tokens).gather(1, wide).cpu(),
            acts=torch.where(empty[..., None], 0.0, self.acts).gather(1, wide).cpu(),
            before=self.before,
        )
