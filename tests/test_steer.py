"""saekit.interpret.edit: steering, clamping and ablating a feature inside a model,
checked against the same edit written out with a plain PyTorch forward hook."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit._runtime.errors import UsageError
from saekit.data.model import from_hf
from saekit.interpret.steer import edit, feature_direction, steer_rows, strength_unit

D, VOCAB, D_SAE = 16, 32, 12
HOOK = "layers.0.resid_post"
DEAD = 3  # a feature whose bias keeps it at zero on every token


def toy_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return from_hf(LlamaForCausalLM(config).float(), name="toy")


def toy_sae():
    sae = saekit.create("relu", d_in=D, d_sae=D_SAE, l1_coefficient=0.0, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
        sae.b_enc[DEAD] = -1e4
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE)[:, None])  # rows of different norms
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    sae.cfg.hook = HOOK
    return sae.eval()


@pytest.fixture(scope="module")
def setup():
    loaded, sae = toy_model(), toy_sae()
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    return loaded, sae, ids


def logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(input_ids=ids, use_cache=False).logits


def reference(loaded, ids, change):
    """Logits with act ← change(act) at layers.0.resid_post, through a plain forward hook."""
    block = loaded.model.model.layers[0]

    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        y = change(x)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    handle = block.register_forward_hook(hook)
    try:
        return logits(loaded, ids)
    finally:
        handle.remove()


def n_hooks(loaded) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())


def firing_feature(sae, loaded, ids) -> int:
    from saekit.data.model import capture

    f = sae.encode(capture(loaded, ids, HOOK)[HOOK].float())
    counts = (f > 0).sum(dim=(0, 1))
    assert counts[DEAD] == 0
    return int(counts.argmax())


def test_steering_with_strength_zero_is_the_identity_exactly(setup):
    loaded, sae, ids = setup
    clean = logits(loaded, ids)
    with edit(loaded, sae, steer={5: 0.0}):
        assert torch.equal(logits(loaded, ids), clean)


def test_ablating_a_feature_that_never_fires_changes_nothing(setup):
    loaded, sae, ids = setup
    clean = logits(loaded, ids)
    with edit(loaded, sae, ablate=[DEAD]):
        assert torch.equal(logits(loaded, ids), clean)


def test_ablation_equals_the_plain_pytorch_reference(setup):
    loaded, sae, ids = setup
    feature = firing_feature(sae, loaded, ids)

    def remove(x):
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)[..., feature]
        return x - f[..., None] * sae.W_dec[feature]

    with edit(loaded, sae, ablate=[feature]):
        edited = logits(loaded, ids)
    expected = reference(loaded, ids, remove)
    assert (edited - logits(loaded, ids)).abs().max() > 1e-3  # it does something
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)


def test_clamp_and_steer_equal_the_reference(setup):
    loaded, sae, ids = setup
    feature = firing_feature(sae, loaded, ids)
    d = sae.W_dec[feature] / sae.W_dec[feature].norm()

    def clamp(x):
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)[..., feature]
        return x + (2.5 - f)[..., None] * sae.W_dec[feature]

    with edit(loaded, sae, clamp={feature: 2.5}):
        clamped = logits(loaded, ids)
    torch.testing.assert_close(clamped, reference(loaded, ids, clamp), rtol=0, atol=1e-5)
    with edit(loaded, sae, steer={feature: 3.0, 0: -1.0}):
        steered = logits(loaded, ids)
    d0 = sae.W_dec[0] / sae.W_dec[0].norm()
    torch.testing.assert_close(steered, reference(loaded, ids, lambda x: x + 3.0 * d - d0), rtol=0, atol=1e-5)
    torch.testing.assert_close(feature_direction(sae, feature).norm(), torch.tensor(1.0))


def test_strength_unit_is_the_norm_of_the_write_at_the_max_activation(setup):
    _, sae, _ = setup
    max_activation = torch.arange(D_SAE, dtype=torch.float32)
    assert strength_unit(sae, max_activation, 7) == pytest.approx(7 * float(sae.W_dec[7].detach().norm()))


def test_rows_steer_their_own_direction(setup):
    loaded, sae, ids = setup
    shifts = torch.stack([torch.zeros(D), 2 * feature_direction(sae, 4), torch.zeros(D)])
    with steer_rows(loaded, sae, shifts):
        rows = logits(loaded, ids)
    clean = logits(loaded, ids)
    assert torch.equal(rows[0], clean[0]) and torch.equal(rows[2], clean[2])
    with edit(loaded, sae, steer={4: 2.0}):
        torch.testing.assert_close(rows[1], logits(loaded, ids)[1], rtol=0, atol=1e-6)


def test_the_hooks_are_removed_after_the_block_also_after_an_exception(setup):
    loaded, sae, ids = setup
    clean = logits(loaded, ids)
    before = n_hooks(loaded)
    with edit(loaded, sae, steer={1: 5.0}, ablate=[2]):
        assert n_hooks(loaded) == before + 1
        assert not torch.equal(logits(loaded, ids), clean)
    assert n_hooks(loaded) == before and torch.equal(logits(loaded, ids), clean)
    with pytest.raises(RuntimeError, match="boom"):
        with edit(loaded, sae, steer={1: 5.0}):
            raise RuntimeError("boom")
    assert n_hooks(loaded) == before and torch.equal(logits(loaded, ids), clean)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"steer": {D_SAE: 1.0}}, f"feature {D_SAE} is out of range"),
        ({"ablate": [-1]}, "feature -1 is out of range"),
        ({"clamp": {0: float("nan")}}, "must be finite"),
    ],
)
def test_bad_edits_are_one_clear_error(setup, kwargs, fragment):
    loaded, sae, _ = setup
    with pytest.raises(UsageError, match=fragment):
        with edit(loaded, sae, **kwargs):
            pass
    assert n_hooks(loaded) == 0


# ---- the pipeline's steering stage (RUN/features/steering.json) ------------------------------------


class LetterTokenizer:
    """A tokenizer for the toy model: one token per letter."""

    bos_token_id, eos_token_id, all_special_ids = 0, None, [0]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids if not (skip_special_tokens and i == 0))


def toy_stats(loaded, sae):
    from saekit.data.corpus import TokenizedCorpus
    from saekit.interpret import collect_feature_stats

    tokens = torch.randint(1, VOCAB, (6, 12), generator=torch.Generator().manual_seed(5))
    tokens[:, 0] = 0
    corpus = TokenizedCorpus(
        tokens=tokens,
        doc_ids=torch.zeros_like(tokens, dtype=torch.int32),
        positions=torch.arange(12, dtype=torch.int32).expand(6, -1).contiguous(),
        train_mask=tokens != 0,
        sources=("toy",),
        options={},
        fingerprint="toy",
    )
    return collect_feature_stats(sae, loaded, corpus, n_top=2, n_random=0, progress=False)


def test_steering_table_has_the_fixed_format_and_strength_zero_is_unsteered(setup):
    from saekit.interpret.steering_table import matches, steering_table, top_features

    loaded, sae, _ = setup
    loaded._tokenizer = LetterTokenizer()
    stats = toy_stats(loaded, sae)
    features = top_features(stats, 3, dense=1.0)
    assert features == sorted(range(D_SAE), key=lambda f: (-int(stats.count[f]), f))[:3]
    assert DEAD not in top_features(stats, D_SAE, dense=1.0)
    dense = [f for f in range(D_SAE) if stats.frequency[f] > 0.5]
    assert not set(dense) & set(top_features(stats, D_SAE, dense=0.5))
    prompts, strengths = ["abc", "hello"], [0.0, 3.0]
    table = steering_table(
        loaded, sae, stats, features=features, prompts=prompts, strengths=strengths, max_new_tokens=5
    )
    assert list(table) == ["hook", "prompts", "strengths", "max_new_tokens", "unsteered", "features"]
    assert table["hook"] == HOOK and table["prompts"] == prompts and table["strengths"] == strengths
    assert list(table["features"]) == [str(f) for f in features]
    for rows in table["features"].values():
        assert [(r["prompt"], r["strength"]) for r in rows] == [(0, 0.0), (0, 3.0), (1, 0.0), (1, 3.0)]
        assert all(len(r["text"]) == 5 for r in rows)  # the continuation only, one letter per token
        assert [r["text"] for r in rows if r["strength"] == 0.0] == table["unsteered"]
    assert any(r["text"] != table["unsteered"][r["prompt"]] for rows in table["features"].values() for r in rows)
    settings = dict(hook=HOOK, features=features, prompts=prompts, strengths=strengths, max_new_tokens=5)
    assert matches(table, **settings)
    assert not matches(table, **{**settings, "strengths": [0.0, 4.0]})
    assert not matches(table, **{**settings, "features": features[:2]})


def test_the_steer_stage_writes_once_redoes_on_new_settings_and_can_be_off(setup, tmp_path, capsys):
    import dataclasses
    import json

    from saekit._runtime.folder import OutputFolder
    from saekit.app.config import RunConfig
    from saekit.app.pipeline import Run, run_stages

    loaded, sae, _ = setup
    loaded._tokenizer = LetterTokenizer()
    folder = tmp_path / "run"
    sae.save(folder / "sae")
    toy_stats(loaded, sae).save(folder / "features")
    config = RunConfig().with_overrides({"model.hook": HOOK, "steer.features": 2, "steer.max_new_tokens": 3})
    output = OutputFolder(folder, kind="run", identity={}).open()
    try:
        run = Run(folder, config, output)
        run.__dict__["model"] = loaded  # the toy model in place of the configured one
        run_stages(run, ("steer",))
        path = folder / "features" / "steering.json"
        first = json.loads(path.read_text())
        from saekit.interpret import FeatureStats
        from saekit.interpret.steering_table import top_features

        expected = top_features(FeatureStats.load(folder / "features"), 2)
        assert first["max_new_tokens"] == 3 and list(first["features"]) == [str(f) for f in expected] and expected
        run_stages(run, ("steer",))
        assert "steer: done already" in capsys.readouterr().out
        run.config = dataclasses.replace(config, steer=dataclasses.replace(config.steer, strengths=[2.0]))
        run_stages(run, ("steer",))
        assert json.loads(path.read_text())["strengths"] == [2.0]
        run.config = dataclasses.replace(config, steer=dataclasses.replace(config.steer, enabled=False))
        run_stages(run, ("steer",))
        assert "steer: off in the config" in capsys.readouterr().out
        assert output.has("features/steering.json")
    finally:
        output.close()
    assert "steer" not in RunConfig().identity()  # changing it never orphans a run
