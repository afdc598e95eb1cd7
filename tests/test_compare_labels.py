"""`saekit compare`: dead and untrained latents are left out on both sides, and features
are labelled from the runs' feature statistics (the top tokens their examples sit on)."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit.app.cli import main
from saekit.evaluation.compare import compare, untrained
from saekit.interpret import FeatureStats
from saekit.interpret.examples import Examples

D_IN, D_SAE, N_TOP, BEFORE = 32, 64, 3, 1
WORDS = [" king", " queen", " sword", " crown", " ghost"]


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def stats_with(count: torch.Tensor, centre_tokens: dict[int, list[int]]) -> FeatureStats:
    """Feature statistics whose top examples of feature i sit on centre_tokens[i]."""
    d, w = len(count), BEFORE + 2
    context = torch.full((d, N_TOP), -1, dtype=torch.int64)
    tokens = torch.full((d, N_TOP, w), -1, dtype=torch.int64)
    for feature, ids in centre_tokens.items():
        for j, token in enumerate(ids[:N_TOP]):
            context[feature, j], tokens[feature, j, BEFORE] = j, token
    examples = Examples(
        values=torch.ones(d, N_TOP),
        context=context,
        position=torch.ones(d, N_TOP, dtype=torch.int64),
        tokens=tokens,
        acts=torch.zeros(d, N_TOP, w),
        before=BEFORE,
    )
    return FeatureStats(
        n_tokens=1000,
        count=count,
        activation_sum=count.double(),
        max_activation=(count > 0).float(),
        hist_edges=torch.logspace(-2, 1, 4, dtype=torch.float64),
        hist_counts=torch.zeros(d, 3, dtype=torch.int64),
        l0_counts=torch.zeros(d + 1, dtype=torch.int64),
        top=examples,
        random=Examples(
            **{k: getattr(examples, k).clone() for k in ("values", "context", "position", "tokens", "acts")},
            before=BEFORE,
        ),
        logits=None,
        meta={"model": "smollm2", "hook": "layers.3.resid_post"},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs made as in the issue: A at seed 0, B at seed 1.

    A: 0-39 trained; 40-51 never fired (dead); 52-63 live but still at their initial
    direction (cos ≈ 0.95). Feature 20 of A resembles B's latent 63, which is still at B's
    initialisation. B: 0-19 are A's 0-19; 20-62 trained elsewhere; 63 untrained.
    So A's features without a counterpart are exactly 20-39."""
    root = tmp_path_factory.mktemp("compare")
    g = torch.Generator().manual_seed(7)
    a = saekit.create("topk", d_in=D_IN, d_sae=D_SAE, k=4, seed=0)
    b = saekit.create("topk", d_in=D_IN, d_sae=D_SAE, k=4, seed=1)
    with torch.no_grad():
        a.W_dec[:40] = unit(torch.randn(40, D_IN, generator=g))
        a.W_dec[40:] = unit(a.W_dec[40:] + 0.3 * unit(torch.randn(24, D_IN, generator=g)))
        b.W_dec[:20] = a.W_dec[:20] * 2.0
        b.W_dec[20:63] = unit(torch.randn(43, D_IN, generator=g))
        a.W_dec[20] = unit(b.W_dec[63] + 0.5 * unit(torch.randn(D_IN, generator=g)))
    for sae, seed, name in ((a, 0, "a"), (b, 1, "b")):
        sae.cfg.provenance = {"seed": seed}
        sae.cfg.hook, sae.cfg.model = "layers.3.resid_post", "smollm2"
        sae.save(root / name / "sae")
    from saekit.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in WORDS]
    count_a = torch.full((D_SAE,), 50, dtype=torch.int64)
    count_a[40:52] = 0
    stats_with(count_a, {f: [ids[f % len(ids)]] * 2 + [ids[(f + 1) % len(ids)]] for f in range(D_SAE)}).save(
        root / "a" / "features"
    )
    stats_with(torch.full((D_SAE,), 50, dtype=torch.int64), {f: [ids[0]] for f in range(D_SAE)}).save(
        root / "b" / "features"
    )
    return root, ids


def test_untrained_latents_are_found_from_the_recorded_seed(runs):
    root, _ = runs
    a = saekit.load(root / "a" / "sae")
    assert untrained(a).nonzero().flatten().tolist() == list(range(40, 64))
    b = saekit.load(root / "b" / "sae")
    assert untrained(b).nonzero().flatten().tolist() == [63]


def test_without_the_exclusions_the_untrained_latents_swamp_the_list(runs):
    root, _ = runs
    plain = compare(root / "a" / "sae", root / "b" / "sae", untrained_cosine=None)
    unmatched = {row["feature"] for row in plain["unmatched"]}
    assert set(range(40, 64)) <= unmatched and 20 not in unmatched  # 20 "matched" B's untrained latent


def test_compare_leaves_out_dead_and_untrained_latents_and_labels_features(runs, capsys, tmp_path):
    root, ids = runs
    out = tmp_path / "c.json"
    assert main(["compare", str(root / "a"), str(root / "b"), "--json", str(out), "--limit", "40"]) == 0
    result = json.loads(out.read_text())
    assert {row["feature"] for row in result["unmatched"]} == set(range(20, 40))
    assert (result["dead_a"], result["untrained_a"], result["untrained_b"]) == (12, 12, 1)
    assert result["n_compared"] == 40 and result["fraction_matched"] == pytest.approx(0.5)
    rows = {row["feature"]: row for row in result["unmatched"]}
    # feature f's top examples sit twice on WORDS[f % 5] and once on WORDS[(f + 1) % 5]
    assert rows[21]["top_tokens"] == [WORDS[1], WORDS[2]] and rows[33]["top_tokens"] == [WORDS[3], WORDS[4]]
    assert all(row["closest_top_tokens"] == [WORDS[0]] for row in result["unmatched"])
    printed = capsys.readouterr().out
    assert "' queen' ' sword'" in printed and "A 12 + 12, B 0 + 1" in printed
