"""Feature statistics (saekit.interpret) on a toy model whose answer is known exactly.

The toy model's activation at layers.0.resid_pre is its token embedding, c_v · e_v with
c_v = 1 + v/10, so a ReLU SAE with hand-set weights has features whose every activation
is known in advance:

    feature 0 reads e_5:   fires only on token 5, with c_5 = 1.5
    feature 1 reads e_7:   fires only on token 7, with c_7 = 1.7
    feature 2:             never fires (b_enc = −1)
    feature 3 reads Σ e_v: fires on every token v with c_v

Its unembedding is the identity and its final norm an RMSNorm with unit weight, so the
logit effects are known too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import saekit
from saekit.data.corpus import TokenizedCorpus
from saekit.data.model import from_hf
from saekit.interpret import ExampleHeap, FeatureStats, collect_feature_stats

VOCAB = D = 16
BOS, SEP = 0, 1
C = torch.tensor([1 + v / 10 for v in range(VOCAB)])
CONTEXTS = [
    [0, 2, 5, 3, 13, 4, 2, 6],
    [0, 7, 2, 5, 5, 3, 14, 2],
    [0, 3, 4, 6, 1, 8, 9, 10],
    [0, 15, 2, 7, 4, 5, 11, 12],
]
BEFORE, AFTER = 2, 1


def toy_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.diag(C))
        model.lm_head.weight.copy_(torch.eye(VOCAB))
    return from_hf(model, name="toy")


def toy_sae():
    sae = saekit.create("relu", d_in=D, d_sae=4, l1_coefficient=0.0)
    e = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = e[5]
        sae.W_enc[:, 1] = e[7]
        sae.W_enc[:, 3] = 1.0
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0, 0.0]))
        sae.W_dec.copy_(torch.stack([e[5] - 0.5 * e[9], e[7], e[2], e[1]]))
    sae.cfg.hook = "layers.0.resid_pre"
    return sae.eval()


def toy_corpus() -> TokenizedCorpus:
    tokens = torch.tensor(CONTEXTS)
    n, T = tokens.shape
    return TokenizedCorpus(
        tokens=tokens,
        doc_ids=torch.zeros(n, T, dtype=torch.int32),
        positions=torch.arange(T, dtype=torch.int32).expand(n, -1).contiguous(),
        train_mask=(tokens != BOS) & (tokens != SEP),
        sources=("toy",),
        options={"context_size": T},
        fingerprint="toy",
        context_index=torch.tensor([10, 11, 12, 13]),  # as if split from a larger corpus
    )


def known_activations() -> torch.Tensor:
    """f: [n_contexts, T, 4] written out from the feature definitions above."""
    tokens = torch.tensor(CONTEXTS)
    c = C[tokens]
    f = torch.stack([c * (tokens == 5), c * (tokens == 7), torch.zeros_like(c), c], dim=-1)
    return f * ((tokens != BOS) & (tokens != SEP))[..., None]


def known_window(ctx: int, pos: int, feature: int) -> tuple[list[int], list[float]]:
    f = known_activations()
    tokens, acts = [], []
    for p in range(pos - BEFORE, pos + AFTER + 1):
        inside = 0 <= p < len(CONTEXTS[ctx])
        tokens.append(CONTEXTS[ctx][p] if inside else -1)
        acts.append(float(f[ctx, p, feature]) if inside else 0.0)
    return tokens, acts


@pytest.fixture(scope="module")
def stats() -> FeatureStats:
    return collect_feature_stats(
        toy_sae(),
        toy_model(),
        toy_corpus(),
        n_top=4,
        n_random=2,
        window=(BEFORE, AFTER),
        n_logits=2,
        batch_contexts=1,
        hist_range=(0.1, 10.0),
        bins_per_decade=10,
        progress=False,
    )


def test_counts_frequencies_and_activation_summaries_are_exact(stats):
    f = known_activations()
    n_tokens = 8 * 4 - 4 - 1  # minus four BOS and one separator
    assert stats.n_tokens == n_tokens
    assert stats.count.tolist() == [4, 2, 0, n_tokens]
    assert stats.frequency.tolist() == pytest.approx([4 / n_tokens, 2 / n_tokens, 0.0, 1.0])
    assert stats.activation_sum.tolist() == pytest.approx(f.sum((0, 1)).double().tolist(), rel=1e-6)
    assert stats.max_activation.tolist() == pytest.approx([1.5, 1.7, 0.0, 2.5], rel=1e-6)
    assert stats.mean_activation.tolist() == pytest.approx([1.5, 1.7, 0.0, float(f[..., 3].sum()) / n_tokens], rel=1e-6)
    l0 = (f > 0).sum(-1)[torch.tensor(CONTEXTS) != BOS]
    l0 = l0[l0 > 0]  # the separator's row is all zero and masked out
    assert stats.l0_counts.tolist() == torch.bincount(l0, minlength=5).tolist()
    assert int(stats.l0_counts.sum()) == n_tokens


def test_histograms_are_exact(stats):
    f = known_activations()
    edges = stats.hist_edges.numpy()
    assert len(edges) == 21 and edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(10.0)
    for feature in range(4):
        values = f[..., feature][f[..., feature] > 0].double().numpy()
        want, _ = np.histogram(values, bins=edges)
        assert stats.hist_counts[feature].tolist() == want.tolist(), feature
    values = f[..., 3][f[..., 3] > 0].double().numpy()
    bin_start = edges[np.searchsorted(edges, 2.45, side="right") - 1]  # 10^0.3: the bin holds 2.0 … 2.4
    assert stats.quantile_of(3, 2.45) == pytest.approx((values < bin_start).mean())
    assert math.isnan(stats.quantile_of(2, 1.0))  # never fired


def test_top_examples_are_exact_across_batches(stats):
    ctx_index = [10, 11, 12, 13]
    # Feature 0 fires on token 5 only: all four firings, ties in corpus order.
    got = stats.top.of(0)
    assert [(e.context, e.position) for e in got] == [(10, 2), (11, 3), (11, 4), (13, 5)]
    for e in got:
        tokens, acts = known_window(ctx_index.index(e.context), e.position, 0)
        assert e.value == pytest.approx(1.5) and e.tokens == tokens and e.acts == pytest.approx(acts)
        assert e.tokens[BEFORE] == 5
    # Feature 3 fires everywhere: its top four are tokens 15, 14, 13, 12, in four batches.
    got = stats.top.of(3)
    assert [(e.context, e.position, e.tokens[BEFORE]) for e in got] == [
        (13, 1, 15),
        (11, 6, 14),
        (10, 4, 13),
        (13, 7, 12),
    ]
    assert [e.value for e in got] == pytest.approx([2.5, 2.4, 2.3, 2.2])
    assert got[3].tokens == [5, 11, 12, -1]  # the window stops at the context's end
    assert got[0].tokens == [-1, 0, 15, 2] and got[0].acts == pytest.approx([0.0, 0.0, 2.5, 1.2])  # BOS: no activation
    # Feature 1 fired twice: two examples, two empty slots; the dead feature has none.
    assert [(e.context, e.position) for e in stats.top.of(1)] == [(11, 1), (13, 3)]
    assert stats.top.context[1, 2:].tolist() == [-1, -1]
    assert stats.top.of(2) == []


def test_random_examples_are_firings_sorted_by_activation(stats):
    assert [(e.context, e.position) for e in stats.random.of(1)] == [(11, 1), (13, 3)]
    ctx_index = [10, 11, 12, 13]
    for feature, token_value in ((0, 1.5), (3, None)):
        got = stats.random.of(feature)
        assert len(got) == 2 and len({(e.context, e.position) for e in got}) == 2
        assert got[0].value >= got[1].value
        for e in got:
            tokens, acts = known_window(ctx_index.index(e.context), e.position, feature)
            assert e.tokens == tokens and e.acts == pytest.approx(acts)
            assert e.value == pytest.approx(token_value if token_value else float(C[tokens[BEFORE]]))
    assert stats.random.of(2) == []


def test_logit_effects_are_the_unembedded_normed_decoder_direction(stats):
    rms = math.sqrt((1 + 0.25) / D + 1e-6)
    assert stats.logits.promoted[0].tolist()[0] == 5
    assert stats.logits.promoted_values[0, 0] == pytest.approx(1 / rms, rel=1e-5)
    assert stats.logits.suppressed[0, 0] == 9
    assert stats.logits.suppressed_values[0, 0] == pytest.approx(-0.5 / rms, rel=1e-5)
    assert stats.logits.promoted[1, 0] == 7 and stats.logits.promoted[3, 0] == 1


def test_statistics_round_trip_through_safetensors(stats, tmp_path):
    path = stats.save(tmp_path)
    assert path.name == "feature_stats.safetensors"
    back = FeatureStats.load(tmp_path)
    assert back.n_tokens == stats.n_tokens and back.meta == stats.meta
    assert back.top.of(3) == stats.top.of(3) and back.random.of(0) == stats.random.of(0)
    assert torch.equal(back.hist_counts, stats.hist_counts) and torch.equal(
        back.logits.suppressed, stats.logits.suppressed
    )
    assert back.meta["hook"] == "layers.0.resid_pre" and back.meta["window"] == [BEFORE, AFTER]
    fresh = stats.save(tmp_path / "run" / "features")  # a new folder appears complete, or not at all
    assert fresh == tmp_path / "run" / "features" / "feature_stats.safetensors"
    assert FeatureStats.load(tmp_path / "run" / "features").top.of(0) == stats.top.of(0)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["features"]
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        FeatureStats.load(tmp_path / "bad.safetensors")


def test_heap_keeps_the_exact_top_n_over_many_batches():
    g = torch.Generator().manual_seed(0)
    B, T, d_sae, n = 3, 10, 7, 5
    heap = ExampleHeap(d_sae, n, before=1, after=1)
    batches = [torch.rand(B, T, d_sae, generator=g) * (torch.rand(B, T, d_sae, generator=g) < 0.3) for _ in range(6)]
    for i, f in enumerate(batches):
        keys = torch.where(f > 0, f, float("-inf")).reshape(-1, d_sae)
        heap.push(keys, f, torch.arange(B * T).view(B, T), torch.arange(i * B, (i + 1) * B))
    result = heap.result()
    everything = torch.cat(batches)  # [contexts, T, d_sae]
    for feature in range(d_sae):
        values = everything[..., feature].flatten()
        want = values[values > 0].sort(descending=True).values[:n]
        got = result.values[feature][result.context[feature] >= 0]
        assert torch.equal(got, want)
        for value, ctx, pos in zip(got, result.context[feature], result.position[feature]):
            assert everything[ctx, pos, feature] == value


def test_random_keys_sample_firings_uniformly():
    """Priority sampling: with n = 2 of 10 firings, each firing is kept with probability 0.2."""
    d_sae, T = 4000, 10  # 4000 features firing on the same tokens: 4000 independent samples
    f = torch.ones(1, T, d_sae)
    heap = ExampleHeap(d_sae, 2, before=0, after=0)
    keys = torch.rand(T, d_sae, generator=torch.Generator().manual_seed(1))
    heap.push(keys, f, torch.arange(T)[None], torch.tensor([0]))
    kept = torch.bincount(heap.result().position.flatten(), minlength=T).double() / d_sae
    assert kept.tolist() == pytest.approx([0.2] * T, abs=0.03)


def test_options_are_checked(stats):
    with pytest.raises(ValueError, match="n_top"):
        collect_feature_stats(toy_sae(), toy_model(), toy_corpus(), n_top=0, progress=False)
    with pytest.raises(ValueError, match="hist_range"):
        collect_feature_stats(toy_sae(), toy_model(), toy_corpus(), hist_range=(1.0, 0.5), progress=False)
