"""Toy activations built from a known dictionary, for tests and benchmarks.

    x = b + Σ_i a_i c_i d_i,   d_i ∈ R^n unit-norm (i < M_true),
    c_i ~ Bernoulli(p_i), a_i ~ Uniform(magnitude range), optionally correlated firing

Feature i fires with its own probability p_i, scaled so that Σ p_i is the expected L0:
log-normally spread (``spread``), or log-uniform over a ``rate_ratio`` (max/min) — a
heavy tail of rare features. Correlated firing uses a Gaussian copula: feature i fires
when u_i < Φ⁻¹(p_i), u ~ N(0, Σ) with Σ = (1 − ρ) I + ρ within groups of features.

Hierarchical features (``n_parents``, ``children``): the first n_parents features are
parents of the next n_parents·children, and a parent fires whenever any of its children
fires (Chanin et al. 2024, "A is for Absorption"). An SAE *absorbs* a child into its
parent latent when, on tokens where the child fires, the latent that reads the parent
does not: ``absorption`` measures that fraction.

Recovery (Sharkey et al. 2022): for each true direction its best cosine similarity
with any learned decoder row; the mean is the MMCS.
"""

from __future__ import annotations

import hashlib
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
    n_parents: int = 0
    """The first n_parents features are parents (see the module docstring)."""
    children: int = 0
    """Children per parent: features n_parents + p·children ... of parent p."""

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
        if self.n_parents:
            kids = fires[:, self.n_parents : self.n_parents * (1 + self.children)]
            any_child = kids.reshape(n_tokens, self.n_parents, self.children).any(dim=2)
            fires = fires.clone()
            fires[:, : self.n_parents] |= any_child
        low, high = self.magnitude
        magnitudes = low + (high - low) * torch.rand(n_tokens, m, generator=generator)
        return fires * magnitudes

    def parent_of(self, child: int) -> int:
        return (child - self.n_parents) // self.children

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


def dictionary_generator(seed: int) -> torch.Generator:
    """The generator a toy dictionary of ``seed`` is drawn from: seeded from a hash of the
    seed, not the seed itself. With ``manual_seed(seed)``, an SAE created with the same seed
    drew its decoder from the same stream, so its first M_true rows *were* the true
    directions: every architecture started at the answer (found in the toy recovery tests,
    where the SAE's seed is the toy's)."""
    digest = hashlib.blake2b(f"saekit.synthetic.dictionary:{seed}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def make_toy(
    n: int = 32,
    m: int = 128,
    *,
    expected_l0: float = 4.0,
    magnitude: tuple[float, float] = (0.5, 1.5),
    correlation: float = 0.0,
    spread: float = 0.5,
    rate_ratio: float | None = None,
    n_parents: int = 0,
    children: int = 0,
    offset_norm: float = 0.0,
    seed: int = 0,
) -> ToyDictionary:
    """A dictionary of m random unit directions in R^n (m > n: superposition).

    ``rate_ratio``: firing probabilities log-uniform between p and rate_ratio·p (instead of
    log-normal with ``spread``). ``n_parents``, ``children``: a hierarchy (the parents'
    own probabilities add to what their children make them fire)."""
    if m < 1 or n < 1:
        raise ValueError("n and m must be positive.")
    if not 0 < expected_l0 < m:
        raise ValueError(f"expected_l0 must be in (0, m={m}).")
    if n_parents * (1 + children) > m:
        raise ValueError(f"{n_parents} parents with {children} children each need more than m={m} features.")
    generator = dictionary_generator(seed)
    directions = torch.randn(m, n, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    if rate_ratio is not None:
        weights = torch.exp(math.log(rate_ratio) * torch.rand(m, generator=generator))
    else:
        weights = torch.exp(spread * torch.randn(m, generator=generator))
    probabilities = (weights / weights.sum() * expected_l0).clamp(max=0.95)
    offset = None
    if offset_norm > 0:
        offset = torch.randn(n, generator=generator)
        offset *= offset_norm / offset.norm()
    return ToyDictionary(
        directions, probabilities, magnitude, correlation, offset=offset, n_parents=n_parents, children=children
    )


def recovery(W_dec: Tensor, directions: Tensor, threshold: float = 0.9) -> dict[str, float]:
    """MMCS of the learned decoder rows W_dec [d_sae, n] against the true directions
    [M_true, n], and the fraction of true directions found at cosine > threshold."""
    learned = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
    true = torch.nn.functional.normalize(directions.float(), dim=1)
    best = (true @ learned.t()).max(dim=1).values
    return {"mmcs": float(best.mean()), "fraction_recovered": float((best > threshold).float().mean())}


@torch.no_grad()
def absorption(sae, dictionary: ToyDictionary, *, n_tokens: int = 50_000, seed: int = 7) -> dict[str, float]:
    """How much an SAE absorbs children into their parents (Chanin et al. 2024): each
    parent's latent is the one whose decoder row is closest to the parent's direction; over
    the tokens where a child fires (so its parent fires too), absorption is the fraction
    on which that latent does not. Returned as the mean over children, with the parents'
    mean best cosine (how well the parent latents were found at all)."""
    if not dictionary.n_parents:
        raise ValueError("the dictionary has no hierarchy (n_parents = 0).")
    generator = torch.Generator().manual_seed(seed)
    codes = dictionary.sample_codes(n_tokens, generator)
    x = codes @ dictionary.directions
    if dictionary.offset is not None:
        x = x + dictionary.offset
    device = sae.W_dec.device
    was_training = sae.training
    sae.eval()
    f = sae.encode(x.to(device)).cpu()
    sae.train(was_training)
    learned = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=1)
    parents = dictionary.directions[: dictionary.n_parents]
    cos = parents @ learned.t()
    best_cos, latent = cos.max(dim=1)
    missed = []
    for child in range(dictionary.n_parents, dictionary.n_parents * (1 + dictionary.children)):
        fired = codes[:, child] > 0
        if int(fired.sum()) == 0:
            continue
        parent_latent = latent[dictionary.parent_of(child)]
        missed.append(float((f[fired, parent_latent] <= 0).float().mean()))
    return {"absorption": sum(missed) / max(len(missed), 1), "parent_cosine": float(best_cos.mean())}


@dataclass(frozen=True)
class ToySetting:
    """A named toy problem: the dictionary, the SAE width and sparsity to train on it, and
    the training budget (what tests and ``benchmarks/toy_recovery.py`` run every
    architecture on)."""

    description: str
    n: int
    m: int
    expected_l0: float
    d_sae: int
    sparsity: int
    """k, or target_l0 for the penalised architectures."""
    toy: dict
    """Further make_toy arguments."""
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 3e-3
    tokens: int = 100_000

    def dictionary(self, seed: int = 0) -> ToyDictionary:
        return make_toy(self.n, self.m, expected_l0=self.expected_l0, seed=seed, offset_norm=1.0, **self.toy)


TOY_SETTINGS: dict[str, ToySetting] = {
    "easy": ToySetting(
        "32 dims, 128 features, L0 4; dictionary 2x, sparsity = true L0",
        32,
        128,
        4,
        256,
        4,
        {},
        steps=1500,
        tokens=40_000,
    ),
    "superposition": ToySetting(
        "64 dims, 6x as many features (384), firing rates log-uniform over 100x, L0 4; "
        "dictionary 2x (768), k / target L0 6 (1.5x)",
        64,
        384,
        4,
        768,
        6,
        {"rate_ratio": 100},
        steps=6000,
    ),
    "correlated": ToySetting(
        "64 dims, 256 features firing in correlated groups of 4 (rho 0.5), rates over 30x, L0 4; "
        "dictionary 2x, k / target L0 6",
        64,
        256,
        4,
        512,
        6,
        {"rate_ratio": 30, "correlation": 0.5},
    ),
    "hierarchy": ToySetting(
        "64 dims, 384 features of which 24 parents with 4 children each (a parent fires with any "
        "child), rates over 30x, L0 4; dictionary 2x, k 6",
        64,
        384,
        4,
        768,
        6,
        {"rate_ratio": 30, "n_parents": 24, "children": 4},
    ),
}
"""The settings' budgets: 1,500 or 3,000 steps of 1,024 tokens, and 6,000 for
"superposition", whose rarest features (rate ~5e-4, a hundredth of the commonest) fire
about 1,500 times in 3,000 steps. There, at 3,000 steps, the features BatchTopK and
Matryoshka missed had a latent at cosine 0.83-0.90 that was still converging (it fired on
about twice its feature's tokens); at 6,000 steps (seeds 0-2) BatchTopK found 0.969,
0.977, 0.969 of the directions against 0.945 on seed 0 at 3,000, Matryoshka 0.956,
0.971, 0.969 against 0.938, JumpReLU 0.956, 0.974, 0.964 against 0.951, 0.961, 0.953."""
