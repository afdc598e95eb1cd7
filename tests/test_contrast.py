"""saekit contrast: the log-odds statistic written out by hand, and its ranking on planted
ground truth (counts drawn from known rates), on the corpus pass and on the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from saekit._runtime.errors import UsageError
from saekit.interpret.contrast import log_odds_ratio, rank, z_bound


def test_log_odds_and_its_standard_error_are_the_formulas():
    k_a, n_a, k_b, n_b, a = 30, 1000, 5, 2000, 0.5
    L, SE = log_odds_ratio(torch.tensor([k_a]), n_a, torch.tensor([k_b]), n_b, prior=a)
    expected = math.log((k_a + a) / (n_a - k_a + a)) - math.log((k_b + a) / (n_b - k_b + a))
    se = math.sqrt(1 / (k_a + a) + 1 / (n_a - k_a + a) + 1 / (k_b + a) + 1 / (n_b - k_b + a))
    assert float(L) == pytest.approx(expected, rel=1e-12) and float(SE) == pytest.approx(se, rel=1e-12)
    assert z_bound(0.05, 1) == pytest.approx(1.6448536, rel=1e-6)
    z = z_bound(0.05, 4608)  # the upper tail beyond z holds alpha / n_tests
    assert 0.5 * math.erfc(z / math.sqrt(2)) == pytest.approx(0.05 / 4608, rel=1e-9) and 4.2 < z < 4.3


def test_equal_counts_have_zero_log_odds_and_the_ranking_is_by_the_bound():
    counts = torch.tensor([0, 10, 100, 10])
    r = rank(counts, 5000, counts, 5000)
    assert torch.equal(r.log_odds, torch.zeros(4, dtype=torch.float64))
    assert len(r.specific) == 0
    assert r.order[-1] == 0  # never fires on A: last
    # the bound ranks the better-measured of two equal ratios first
    r = rank(torch.tensor([20, 200]), 10_000, torch.tensor([2, 20]), 10_000)
    assert float(r.log_odds[0]) == pytest.approx(float(r.log_odds[1]), abs=0.3) and r.order.tolist() == [1, 0]


def test_a_feature_firing_twice_on_a_is_not_specific():
    n, d = 50_000, 4608
    count_a = torch.zeros(d, dtype=torch.int64)
    count_b = torch.zeros(d, dtype=torch.int64)
    count_a[7] = 2  # twice on A, never on B: the largest raw ratio of all
    count_a[8], count_b[8] = 200, 10  # a real difference
    r = rank(count_a, n, count_b, n)
    assert r.log_odds[7] > 1.5 and r.lower[7] < 0
    assert r.specific.tolist() == [8] and r.order[0] == 8
    assert r.lower[8] == pytest.approx(1.61, abs=0.02)  # the module docstring's example


def planted(seed: int, d: int = 2000, n_a: int = 40_000, n_b: int = 60_000):
    """Counts drawn from known rates: background log-uniform in [1e-5, 1e-2] on both sides;
    features 0-19 fire 4x more often on A; 20-29 are rare (rate 3e-5) on A only."""
    g = torch.Generator().manual_seed(seed)
    rate = 10 ** (torch.rand(d, generator=g, dtype=torch.float64) * 3 - 5)
    rate_a, rate_b = rate.clone(), rate.clone()
    rate_a[:20] = (rate[:20] * 4).clamp(max=0.04)
    rate_a[:20] = torch.maximum(rate_a[:20], torch.full((20,), 2e-3, dtype=torch.float64))
    rate_b[:20] = rate_a[:20] / 4
    rate_a[20:30], rate_b[20:30] = 3e-5, 0.0
    count_a = torch.binomial(torch.full((d,), float(n_a), dtype=torch.float64), rate_a, generator=g).long()
    count_b = torch.binomial(torch.full((d,), float(n_b), dtype=torch.float64), rate_b, generator=g).long()
    return count_a, n_a, count_b, n_b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_specific_features_rank_first_and_nothing_else_is_specific(seed):
    count_a, n_a, count_b, n_b = planted(seed)
    r = rank(count_a, n_a, count_b, n_b)
    top = set(r.order[:20].tolist())
    assert len(top & set(range(20))) >= 18  # the planted ones lead the ranking
    assert set(r.specific.tolist()) <= set(range(20))  # no false discovery: no background, no rare one
    assert len(r.specific) >= 15
    assert max(r.order.tolist().index(f) for f in range(20, 30)) > 20  # rare ones (≈1 firing) stay down


@pytest.mark.parametrize("seed", [3, 4])
def test_a_corpus_against_an_equal_one_has_no_specific_feature(seed):
    count_a, n_a, _, _ = planted(seed, n_a=50_000)
    g = torch.Generator().manual_seed(seed + 100)
    # B: the same rates, drawn again (two samples of one corpus)
    rate = count_a.double() / n_a
    count_b = torch.binomial(torch.full_like(rate, 50_000.0), rate, generator=g).long()
    assert len(rank(count_a, n_a, count_b, 50_000).specific) == 0
    assert len(rank(count_a, n_a, count_a, n_a).specific) == 0  # literally itself


def test_bad_counts_are_refused():
    with pytest.raises(UsageError, match="between 0 and the number of tokens"):
        rank(torch.tensor([5]), 4, torch.tensor([0]), 4)
    with pytest.raises(UsageError, match="both corpora need tokens"):
        rank(torch.tensor([0]), 0, torch.tensor([0]), 4)


def test_parts_of_the_embedded_corpus_are_named_by_group_and_play():
    from saekit.data.corpus import default_corpus_path
    from saekit.data.corpus_select import corpus_paths, embedded_parts, read_corpus

    root = default_corpus_path()
    parts = embedded_parts()
    assert {"comedies", "tragedies", "histories"} <= set(parts) and "hamlet" in parts["tragedies"]
    assert corpus_paths("default") == [root]
    assert corpus_paths("default:comedies,romances") == [root / "comedies", root / "romances"]
    assert (
        corpus_paths("default:tragedies/hamlet") == corpus_paths("default:hamlet") == [root / "tragedies" / "hamlet.md"]
    )
    documents = read_corpus("default:tragedies")
    assert len(documents) == len(parts["tragedies"]) and all("/tragedies/" in d.source for d in documents)
    for bad, fragment in (("default:farces", "no part 'farces'"), ("default:tragedies/tempest", "no part")):
        with pytest.raises(UsageError, match=fragment):
            corpus_paths(bad)


def test_dispersion_is_pearsons_chi_square_over_the_contexts():
    from saekit.interpret.contrast import dispersion

    counts = torch.tensor([[0, 4, 0], [2, 0, 0], [1, 2, 3]])  # [contexts, features]
    tokens = torch.tensor([10, 10, 20])
    phi = dispersion(counts, tokens)
    for i in range(2):
        y, n = counts[:, i].double(), tokens.double()
        p = y.sum() / n.sum()
        chi2 = float(((y - n * p) ** 2 / (n * p * (1 - p))).sum())
        assert float(phi[i]) == pytest.approx(max(1.0, chi2 / 2), rel=1e-12)
    assert float(phi[2]) == pytest.approx(
        max(
            1.0,
            float(
                (
                    (torch.tensor([0, 0, 3.0]) - torch.tensor([0.75, 0.75, 1.5])) ** 2
                    / (torch.tensor([10, 10, 20.0]) * 0.075 * 0.925)
                ).sum()
            )
            / 2,
        )
    )
    assert torch.equal(dispersion(torch.zeros(3, 2, dtype=torch.int64), tokens), torch.ones(2, dtype=torch.float64))


def bursty(seed: int, rate: torch.Tensor, m: int = 400, t: int = 100) -> torch.Tensor:
    """[m, d] firings per context of t tokens: each context draws its own rate from a
    gamma around ``rate`` (shape 0.5: features fire in bursts), then binomial counts."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.full((m, rate.numel()), 0.5, dtype=torch.float64)
    local = torch._standard_gamma(shape, generator=g) / 0.5 * rate
    return torch.binomial(torch.full_like(local, float(t)), local.clamp(max=1.0), generator=g).long()


@pytest.mark.parametrize("seed", [0, 1])
def test_bursty_samples_of_one_corpus_are_not_specific_once_dispersion_is_counted(seed):
    from saekit.interpret.contrast import dispersion

    d, m, t = 1000, 400, 100
    rate = 10 ** (torch.rand(d, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2 - 4)
    a, b = bursty(2 * seed, rate), bursty(2 * seed + 1, rate)
    tokens = torch.full((m,), t)
    plain = rank(a.sum(0), m * t, b.sum(0), m * t)
    assert len(plain.specific) > 0  # the binomial bound is fooled by bursts
    fixed = rank(
        a.sum(0), m * t, b.sum(0), m * t, dispersion_a=dispersion(a, tokens), dispersion_b=dispersion(b, tokens)
    )
    assert len(fixed.specific) == 0
    # and a planted 4x feature on A is still found through the bursts
    boosted = rate.clone()
    boosted[:10] = 4e-3
    a2 = bursty(2 * seed, torch.where(torch.arange(d) < 10, boosted * 4, rate))
    b2 = bursty(2 * seed + 1, boosted)
    found = rank(
        a2.sum(0), m * t, b2.sum(0), m * t, dispersion_a=dispersion(a2, tokens), dispersion_b=dispersion(b2, tokens)
    )
    assert set(found.specific.tolist()) <= set(range(10)) and len(found.specific) >= 8
