"""Evaluation inside the model (saekit.evaluation.splice), checked against a hand-written splice:
a forward hook on the decoder block that replaces its output, and cross-entropy, KL and
loss recovered written out from their definitions."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

import saekit
from saekit.data.corpus import TokenizedCorpus
from saekit.data.model import from_hf
from saekit.evaluation.splice import evaluate_in_model, limit_tokens, print_table, read_metrics, write_metrics

LAYER = 1
HOOK = f"layers.{LAYER}.resid_post"
BOS = 0


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=BOS,
        eos_token_id=1,
    )
    return from_hf(LlamaForCausalLM(config).float(), name="tiny-llama")


def toy_corpus(n_contexts: int = 5, context_size: int = 12, seed: int = 0) -> TokenizedCorpus:
    """Random contexts starting with BOS, with a separator (token 1) in the middle of each;
    BOS and separators are out of the train mask."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 64, (n_contexts, context_size), generator=g)
    tokens[:, 0] = BOS
    tokens[:, context_size // 2] = 1
    mask = (tokens != BOS) & (tokens != 1)
    return TokenizedCorpus(
        tokens=tokens,
        doc_ids=torch.zeros_like(tokens, dtype=torch.int32),
        positions=torch.arange(context_size, dtype=torch.int32).expand(n_contexts, -1).contiguous(),
        train_mask=mask,
        sources=("toy",),
        options={"context_size": context_size, "pack": True},
        fingerprint=f"toy-{seed}",
    )


def toy_sae(d_in: int = 32, d_sae: int = 64, k: int = 4):
    sae = saekit.create("topk", d_in=d_in, d_sae=d_sae, k=k, seed=1)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.1)
    sae.cfg.hook = HOOK
    return sae.eval()


def hand_spliced_log_probs(model, block, tokens, mask, replace=None):
    """log p over the vocabulary with block's output replaced by replace(h) at mask."""

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        new = torch.where(mask[..., None], replace(h).to(h.dtype), h)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook) if replace is not None else None
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens).logits
    finally:
        if handle is not None:
            handle.remove()
    return logits.float().log_softmax(-1)


def reference(model, block, corpus, sae, hook_layer):
    """CE clean / SAE / zero / mean, KL and the activation mean, from the definitions."""
    tokens, mask = corpus.tokens, corpus.train_mask
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states[hook_layer + 1]
    mean = hidden[mask].float().mean(0)
    scored = mask.clone()
    scored[:, -1] = False
    targets = tokens[:, 1:][scored[:, :-1]]

    def ce(logp):
        return float(-logp[scored].gather(1, targets[:, None]).mean())

    clean = hand_spliced_log_probs(model, block, tokens, mask)
    spliced = hand_spliced_log_probs(model, block, tokens, mask, lambda h: sae(h.float()))
    kl = float((clean.exp() * (clean - spliced)).sum(-1)[scored].mean())
    return {
        "ce_clean": ce(clean),
        "ce_sae": ce(spliced),
        "ce_zero_ablation": ce(hand_spliced_log_probs(model, block, tokens, mask, torch.zeros_like)),
        "ce_mean_ablation": ce(hand_spliced_log_probs(model, block, tokens, mask, lambda h: mean.expand_as(h))),
        "kl_div": kl,
        "n_predictions": int(scored.sum()),
        "activations": hidden[mask].float(),
    }


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def test_spliced_cross_entropy_matches_a_hand_written_splice(tiny):
    corpus, sae = toy_corpus(), toy_sae()
    got = evaluate_in_model(sae, tiny, corpus, batch_contexts=2, progress=False)
    want = reference(tiny.model, tiny.model.model.layers[LAYER], corpus, sae, LAYER)
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation", "kl_div"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key
    assert got["n_predictions"] == want["n_predictions"]
    assert got["loss_recovered"] == pytest.approx(
        (want["ce_zero_ablation"] - want["ce_sae"]) / (want["ce_zero_ablation"] - want["ce_clean"]), rel=1e-5
    )
    assert got["loss_recovered_mean_ablation"] == pytest.approx(
        (want["ce_mean_ablation"] - want["ce_sae"]) / (want["ce_mean_ablation"] - want["ce_clean"]), rel=1e-5
    )
    assert got["delta_lm_loss"] == pytest.approx(want["ce_sae"] - want["ce_clean"], rel=1e-5, abs=1e-6)
    # The splice changed something (a test of nothing would pass the checks above too).
    assert got["ce_sae"] != pytest.approx(got["ce_clean"], abs=1e-3)
    assert got["hook"] == HOOK and got["model"] == "tiny-llama" and got["n_contexts"] == len(corpus)


def test_special_tokens_keep_their_activation(tiny):
    """Replacing BOS and separators as well would change every later prediction."""
    corpus, sae = toy_corpus(), toy_sae()
    got = evaluate_in_model(sae, tiny, corpus, batch_contexts=5, progress=False)
    everywhere = torch.ones_like(corpus.train_mask)
    logp = hand_spliced_log_probs(
        tiny.model, tiny.model.model.layers[LAYER], corpus.tokens, everywhere, lambda h: sae(h.float())
    )
    scored = corpus.train_mask.clone()
    scored[:, -1] = False
    wrong = float(-logp[scored].gather(1, corpus.tokens[:, 1:][scored[:, :-1]][:, None]).mean())
    assert abs(got["ce_sae"] - wrong) > 10 * 1e-6 * wrong  # well outside the 1e-6 agreement above


def test_activation_metrics_are_saekit_evaluate_on_the_same_tokens(tiny):
    corpus, sae = toy_corpus(), toy_sae()
    got = evaluate_in_model(sae, tiny, corpus, batch_contexts=3, progress=False)
    acts = reference(tiny.model, tiny.model.model.layers[LAYER], corpus, sae, LAYER)["activations"]
    want = saekit.evaluate(sae, acts)
    assert got["n_tokens"] == int(corpus.train_mask.sum()) == want["n_tokens"]
    for key in (
        "l0",
        "l1",
        "mse",
        "fvu",
        "explained_variance",
        "dead_fraction",
        "dense_fraction",
        "relative_reconstruction_bias",
    ):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    torch.testing.assert_close(got["feature_frequency"], want["feature_frequency"])


def test_a_perfect_reconstruction_recovers_all_the_loss(tiny):
    """x̂ = ReLU(x) − ReLU(−x) = x: loss recovered 1, ΔLM loss 0, KL 0, FVU 0."""
    d = tiny.d_model
    sae = saekit.create("relu", d_in=d, d_sae=2 * d, l1_coefficient=0.0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    sae.cfg.hook = HOOK
    got = evaluate_in_model(sae, tiny, toy_corpus(), progress=False)
    assert got["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert got["delta_lm_loss"] == pytest.approx(0.0, abs=1e-5)
    assert got["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert got["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert got["ce_zero_ablation"] > got["ce_clean"]


def test_padding_is_never_a_target(tiny):
    corpus = toy_corpus(n_contexts=2)
    corpus.doc_ids[:, -3:] = -1  # the last three tokens are padding
    corpus.train_mask[:, -3:] = False
    got = evaluate_in_model(toy_sae(), tiny, corpus, progress=False)
    # Scored: train-mask positions whose next token is real text.
    scored = corpus.train_mask[:, :-1] & (corpus.doc_ids[:, 1:] >= 0)
    assert got["n_predictions"] == int(scored.sum())


def test_max_tokens_keeps_whole_leading_contexts():
    corpus = toy_corpus(n_contexts=6)
    per_context = corpus.train_mask.sum(1)
    limited = limit_tokens(corpus, int(per_context[0]) + 1)
    assert len(limited) == 2
    assert torch.equal(limited.tokens, corpus.tokens[:2])
    assert limit_tokens(corpus, None) is corpus
    assert len(limit_tokens(corpus, 10**6)) == 6
    with pytest.raises(ValueError, match="max_tokens"):
        limit_tokens(corpus, 0)


def test_inputs_are_checked_at_the_boundary(tiny):
    corpus = toy_corpus()
    sae = toy_sae()
    sae.cfg.hook = None
    with pytest.raises(ValueError, match="hook"):
        evaluate_in_model(sae, tiny, corpus, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_in_model(toy_sae(), tiny, corpus, hook="layers.9.resid_post", progress=False)
    with pytest.raises(ValueError, match="d_in=16"):
        evaluate_in_model(toy_sae(d_in=16), tiny, corpus, progress=False)


def test_metrics_json_round_trips_and_the_table_prints(tmp_path):
    metrics = {
        "hook": HOOK,
        "model": "m",
        "ce_clean": 2.0,
        "ce_sae": 2.5,
        "loss_recovered": float("nan"),
        "l0": 12.5,
        "n_tokens": 1000,
        "feature_frequency": torch.tensor([0.0, 0.25]),
    }
    path = write_metrics(tmp_path / "metrics.json", metrics)
    back = read_metrics(path)
    assert back["feature_frequency"] == [0.0, 0.25] and back["loss_recovered"] is None
    json.loads(path.read_text())  # strict JSON: no NaN literal
    out = io.StringIO()
    print_table(back, file=out)
    text = out.getvalue()
    assert "CE clean" in text and "2.5" in text and "n/a" in text and "1,000" in text and HOOK in text
    with pytest.raises(FileNotFoundError, match="saekit evaluate"):
        read_metrics(tmp_path / "missing.json")


# ---- the embedded model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from saekit.data.model import load_model

    return load_model()


@pytest.mark.slow
def test_spliced_cross_entropy_matches_a_hand_written_splice_on_smollm2(smollm2):
    from saekit.data.corpus import default_corpus_path, read_documents, tokenize

    layer = 15
    documents = read_documents(default_corpus_path())[:1]
    corpus = tokenize(documents, smollm2.tokenizer, 24, max_contexts=2)
    sae = saekit.create("topk", d_in=smollm2.d_model, d_sae=256, k=8, seed=0).eval()
    with torch.no_grad():  # a crude SAE: b_dec at the mean makes it far better than zero-ablation
        acts = reference_hidden(smollm2, corpus, layer)
        sae.b_dec.copy_(acts.mean(0))
    sae.cfg.hook = f"layers.{layer}.resid_post"
    got = evaluate_in_model(sae, smollm2, corpus, batch_contexts=2, progress=False)
    want = reference(smollm2.model, smollm2.model.model.layers[layer], corpus, sae, layer)
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation", "kl_div"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    assert math.isfinite(got["loss_recovered"])
    assert got["ce_zero_ablation"] > got["ce_sae"] > got["ce_clean"]


def reference_hidden(loaded, corpus, layer):
    with torch.no_grad():
        hidden = loaded.model(input_ids=corpus.tokens, output_hidden_states=True).hidden_states[layer + 1]
    return hidden[corpus.train_mask].float()
