"""Toy activations built from a known dictionary, for tests and benchmarks.

    x = b + Σ_i a_i c_i d_i,   d_i ∈ R^n unit-norm (i < M_true),
    c_i ~ Bernoulli(p_i), a_i ~ Uniform(magnitude range), optionally correlated firing

Feature i fires with its own probability p_i (log-normally spread, scaled so that
Σ p_i is the expected L0). Correlated firing uses a Gaussian copula: feature i fires
when u_i < Φ⁻¹(p_i), u ~ N(0, Σ) with Σ = (1 − ρ) I + ρ within groups of features.

Recovery (Sharkey et al. 2022): for each true direction its best cosine similarity
with any learned decoder row; the mean is the MMCS.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ToyDictionary:
    directions: Tensor
    """d_i: [M_true, n], unit rows."""
    probabilities: Tensor
    """p_i: [M_true]."""
    magnitude: tuple[float, float] = (0.5, 1.5)
    """Range of the uniform firing magnitude a_i."""
    correlation: float = 0.0
    """ρ of the Gaussian copula within groups of ``group_size`` features (0: independent)."""
    group_size: int = 4
    offset: Tensor | None = None
    """b: [n], a constant added to every activation (what b_dec should learn)."""

    @property
    def d_in(self) -> int:
        return self.directions.shape[1]

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    def sample_codes(self, n_tokens: int, generator: torch.Generator) -> Tensor:
        """True coefficients a_i c_i: [n_tokens, M_true]."""
        m = self.n_features
        if self.correlation == 0:
            fires = torch.rand(n_tokens, m, generator=generator) < self.probabilities
        else:
            rho = self.correlation
            shared = torch.randn(n_tokens, math.ceil(m / self.group_size), generator=generator)
            shared = shared.repeat_interleave(self.group_size, dim=1)[:, :m]
            u = math.sqrt(rho) * shared + math.sqrt(1 - rho) * torch.randn(n_tokens, m, generator=generator)
            cut = torch.distributions.Normal(0.0, 1.0).icdf(self.probabilities)
            fires = u < cut
        low, high = self.magnitude
        magnitudes = low + (high - low) * torch.rand(n_tokens, m, generator=generator)
        return fires * magnitudes

    def sample(self, n_tokens: int, *, seed: int = 0) -> Tensor:
        """x: [n_tokens, n]."""
        generator = torch.Generator().manual_seed(seed)
        x = self.sample_codes(n_tokens, generator) @ self.directions
        return x + self.offset if self.offset is not None else x

    # A batch source (see data/source.py): batch i is drawn from its own seed, so the
    # stream is endless, reproducible and the same whatever the number of ranks.
    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Tensor]:
        per_rank = batch_size // world_size
        i = start
        while True:
            batch = self.sample(batch_size, seed=seed * 1_000_003 + i + 1)
            yield batch[rank * per_rank : (rank + 1) * per_rank]
            i += 1


def make_toy(
    n: int = 32,
    m: int = 128,
    *,
    expected_l0: float = 4.0,
    magnitude: tuple[float, float] = (0.5, 1.5),
    correlation: float = 0.0,
    spread: float = 0.5,
    offset_norm: float = 0.0,
    seed: int = 0,
) -> ToyDictionary:
    """A dictionary of m random unit directions in R^n (m > n: superposition)."""
    if m < 1 or n < 1:
        raise ValueError("n and m must be positive.")
    if not 0 < expected_l0 < m:
        raise ValueError(f"expected_l0 must be in (0, m={m}).")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(m, n, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    weights = torch.exp(spread * torch.randn(m, generator=generator))
    probabilities = (weights / weights.sum() * expected_l0).clamp(max=0.95)
    offset = None
    if offset_norm > 0:
        offset = torch.randn(n, generator=generator)
        offset *= offset_norm / offset.norm()
    return ToyDictionary(directions, probabilities, magnitude, correlation, offset=offset)


def recovery(W_dec: Tensor, directions: Tensor, threshold: float = 0.9) -> dict[str, float]:
    """MMCS of the learned decoder rows W_dec [d_sae, n] against the true directions
    [M_true, n], and the fraction of true directions found at cosine > threshold."""
    learned = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
    true = torch.nn.functional.normalize(directions.float(), dim=1)
    best = (true @ learned.t()).max(dim=1).values
    return {"mmcs": float(best.mean()), "fraction_recovered": float((best > threshold).float().mean())}
