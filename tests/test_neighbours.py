"""Co-firing and decoder neighbours (interpret/neighbours.py) and logit-weight histograms
(interpret/logit_histogram.py), against plain-PyTorch references written from the definitions."""

from __future__ import annotations

import math

import torch
from test_interpret import VOCAB, D, toy_model, toy_sae

import saekit
from saekit.interpret.logit_histogram import histogram_rows, logit_histograms
from saekit.interpret.neighbours import co_firing_counts, decoder_neighbours, firing_pattern, top_co_firing


def small_sae():
    return saekit.create("topk", d_in=8, d_sae=24, k=3, seed=1).eval()


def reference_counts(sae, x):
    """C_ij = Σ_t 1[f_ti > 0] 1[f_tj > 0], token by token."""
    f = sae.encode(x)
    counts = torch.zeros(sae.d_sae, sae.d_sae)
    for t in range(x.shape[0]):
        active = (f[t] > 0).nonzero().flatten().tolist()
        for i in active:
            for j in active:
                counts[i, j] += 1
    return counts


def test_co_firing_counts_equal_the_definition():
    sae = small_sae()
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference_counts(sae, x)
    pattern = firing_pattern(sae, x.split(64))  # uneven batches: 64 × 4 + 44
    assert pattern.n_tokens == 300 and pattern.d_sae == 24
    assert torch.equal(co_firing_counts(pattern, torch.arange(24)), expected)
    assert torch.equal(co_firing_counts(pattern, [5, 2]), expected[[5, 2]])  # any rows, in the order asked
    assert torch.equal(expected.diagonal(), (sae.encode(x) > 0).sum(0).float())  # C_ii: firings


def test_top_co_firing_ranks_by_jaccard_and_reports_the_ratio():
    sae = small_sae()
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    pattern = firing_pattern(sae, x.split(100))
    with torch.no_grad():
        counts = reference_counts(sae, x)
    k = 5
    result = top_co_firing(pattern, k=k, features=[0, 3, 7])
    assert result.features.tolist() == [0, 3, 7] and result.n_tokens == 300
    for row, i in enumerate([0, 3, 7]):
        c_ii = float(counts[i, i])
        scores = []
        for j in range(sae.d_sae):
            if j != i and counts[i, j] > 0:
                jaccard = float(counts[i, j]) / (c_ii + float(counts[j, j]) - float(counts[i, j]))
                scores.append((jaccard, j))
        scores.sort(key=lambda s: -s[0])
        found = [(j, s) for j, s in zip(result.indices[row].tolist(), result.jaccard[row].tolist()) if j >= 0]
        assert len(found) == min(k, len(scores))
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        for (j, s), (expected, _) in zip(found, scores):
            assert math.isclose(s, expected, rel_tol=1e-6)  # the same values (ties may swap ids)
            ratio = result.ratio[row, [jj for jj, _ in found].index(j)]
            assert math.isclose(float(ratio), float(counts[i, j]) / c_ii, rel_tol=1e-6)
        assert int(result.fired[row]) == c_ii
        assert i not in result.indices[row].tolist()  # never its own neighbour
        assert (result.indices[row, len(found) :] == -1).all()  # empty slots, no made-up neighbours


def test_two_planted_features_that_always_fire_together_co_fire_at_one():
    sae = toy_sae()
    with torch.no_grad():  # feature 2 now reads e_5, like feature 0: they fire on the same tokens
        sae.W_enc[:, 2] = torch.eye(D)[5]
        sae.b_enc[2] = 0.0
    x = torch.diag(torch.linspace(1, 2, D)).repeat(3, 1)  # every token once, three times: 48 rows
    result = top_co_firing(firing_pattern(sae, [x]), k=3)
    assert result.indices[0].tolist() == [2, 3, -1]  # 0 and 1 never fire together
    assert result.jaccard[0, 0] == 1.0 and result.ratio[0, 0] == 1.0
    assert result.indices[2, 0] == 0 and result.jaccard[2, 0] == 1.0
    # Feature 3 fires on every token: ratio 1 from feature 0's side, Jaccard 3 / 48.
    assert result.ratio[0, 1] == 1.0 and math.isclose(float(result.jaccard[0, 1]), 3 / 48, rel_tol=1e-6)
    assert int(result.fired[3]) == 48


def test_decoder_neighbours_equal_pairwise_cosines():
    W = torch.randn(30, 6, generator=torch.Generator().manual_seed(2))
    result = decoder_neighbours(W, k=4, features=[1, 29], chunk=1)
    for row, i in enumerate([1, 29]):
        cos = torch.tensor([float(torch.nn.functional.cosine_similarity(W[i], W[j], dim=0)) for j in range(30)])
        cos[i] = -2
        values, indices = cos.sort(descending=True)
        assert result.indices[row].tolist() == indices[:4].tolist()
        assert torch.allclose(result.cosine[row], values[:4], atol=1e-6)
    everyone = decoder_neighbours(W, k=29)
    assert everyone.indices.shape == (30, 29) and not (everyone.indices == torch.arange(30)[:, None]).any()


def test_histogram_rows_equal_torch_histc():
    values = torch.randn(5, 1000, generator=torch.Generator().manual_seed(3))
    low, high, counts = histogram_rows(values, 17)
    for row in range(5):
        lo, hi = float(values[row].min()), float(values[row].max())
        assert math.isclose(float(low[row]), lo) and math.isclose(float(high[row]), hi)
        expected = torch.histc(values[row], bins=17, min=lo, max=hi).long()
        assert (counts[row] - expected).abs().sum() <= 2  # float rounding at a bin edge, at most
        assert int(counts[row].sum()) == 1000
    constant = histogram_rows(torch.ones(1, 10), 4)[2]
    assert constant.tolist() == [[10, 0, 0, 0]]


def test_logit_histogram_of_the_toy_model_is_known():
    """W_U = I and an RMSNorm of unit weight: the weights of d_0 = e_5 − ½e_9 are
    d_0 / rms(d_0) — one token at 1/rms, one at −½/rms, the other 14 at 0."""
    loaded, sae = toy_model(), toy_sae()
    result = logit_histograms(sae, loaded, "layers.0.resid_pre", features=[0, 1], bins=40)
    rms = math.sqrt(1.25 / D)
    assert math.isclose(float(result.high[0]), 1 / rms, rel_tol=1e-4)
    assert math.isclose(float(result.low[0]), -0.5 / rms, rel_tol=1e-4)
    counts = result.counts[0].tolist()
    zero_bin = int((0 - float(result.low[0])) / (float(result.high[0] - result.low[0])) * 40)
    assert counts[0] == 1 and counts[-1] == 1 and counts[zero_bin] == VOCAB - 2 and sum(counts) == VOCAB
    # d_1 = e_7: one token at 1/rms(e_7) = 4, the other 15 at 0 (the first bin).
    assert math.isclose(float(result.high[1]), 4.0, rel_tol=1e-4) and result.counts[1, 0] == VOCAB - 1


def test_co_firing_in_blocks_of_rows_equals_one_block(monkeypatch):
    import saekit.interpret.neighbours as neighbours

    sae = small_sae()
    pattern = firing_pattern(sae, [torch.randn(200, 8, generator=torch.Generator().manual_seed(4))])
    whole = top_co_firing(pattern, k=6)
    monkeypatch.setattr(neighbours, "ROW_BLOCK_FLOATS", 2 * 24)  # two rows of C at a time
    blocked = top_co_firing(pattern, k=6)
    for a, b in zip(whole, blocked):
        assert a == b if isinstance(a, int) else torch.equal(a, b)
