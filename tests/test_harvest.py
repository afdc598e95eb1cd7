"""Harvesting real SmolLM2 activations into stores, resuming, live streams, and the
end-to-end path corpus → activations → SAE (slow: loads the embedded model)."""

from __future__ import annotations

import json

import pytest
import torch

import saekit.data.harvest as harvest_module
from saekit._runtime.errors import FolderError
from saekit.data.corpus import default_corpus_path, read_documents, tokenize
from saekit.data.harvest import harvest
from saekit.data.live import LiveActivations
from saekit.data.model import capture, load_model
from saekit.data.store import open_store

pytestmark = pytest.mark.slow
HOOK = "layers.15.resid_post"


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def documents():
    return read_documents(default_corpus_path())


@pytest.fixture(scope="module")
def corpus(smollm2, documents):
    return tokenize(documents, smollm2.tokenizer, context_size=64, max_contexts=12)


def test_store_holds_the_models_activations(smollm2, corpus, tmp_path):
    store = harvest(smollm2, corpus, HOOK, tmp_path / "s", shard_tokens=256, batch_contexts=4, progress=False)[HOOK]
    mask = corpus.train_mask
    assert store.n_tokens == corpus.n_tokens == int(mask.sum()) and store.d_in == 576
    with torch.no_grad():  # the model's own hidden states, in the same batches of 4 contexts
        hidden = torch.cat(
            [
                smollm2.model(corpus.tokens[i : i + 4], output_hidden_states=True).hidden_states[16]
                for i in range(0, len(corpus), 4)
            ]
        )
        whole = smollm2.model(corpus.tokens, output_hidden_states=True).hidden_states[16]
    assert torch.equal(store.activations[:], hidden[mask].to(torch.bfloat16))
    # in one batch of 12 the bf16 kernels round differently: equal to bf16 precision
    error = (store.activations[:].float() - whole[mask].float()).norm() / whole[mask].float().norm()
    assert error < 3e-2
    assert torch.equal(store.token_ids[:], corpus.tokens[mask])
    assert torch.equal(store.doc_ids[:], corpus.doc_ids[mask].long())
    assert torch.equal(store.positions[:], corpus.positions[mask].long())
    store.verify()

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["model"] == "smollm2" and manifest["hook"] == HOOK
    assert (manifest["dtype"], manifest["d_in"], manifest["context_size"]) == ("bfloat16", 576, 64)
    assert manifest["corpus_fingerprint"] == corpus.fingerprint and manifest["tokenizer"]
    assert manifest["n_shards"] == len(manifest["shards"]) == 3  # 4 contexts a shard
    assert all(len(s["sha256"]["act"]) == 64 for s in manifest["shards"])
    on_disk = sum(f.stat().st_size for f in (tmp_path / "s").glob("shard-*"))
    assert on_disk == store.n_tokens * (2 * 576 + 12)  # bf16 rows + three int32 per row

    again = harvest(smollm2, corpus, HOOK, tmp_path / "s", shard_tokens=256, batch_contexts=4, progress=False)[HOOK]
    assert again.manifest == store.manifest  # the same settings: the finished store, reused as it is
    with pytest.raises(FolderError, match=r"other settings \(.*n_shards: 3 -> 1.*--overwrite"):
        harvest(smollm2, corpus, HOOK, tmp_path / "s", shard_tokens=4096, progress=False)


def test_several_hooks_in_one_pass_and_max_tokens(smollm2, corpus, tmp_path):
    hooks = ["layers.2.attn_out", "layers.2.resid_pre", "layers.5.mlp_out"]
    stores = harvest(smollm2, corpus, hooks, tmp_path / "multi", max_tokens=300, dtype="float32", progress=False)
    assert set(stores) == set(hooks)
    per_context = corpus.train_mask.sum(1).cumsum(0)
    n = int(torch.searchsorted(per_context, 300)) + 1  # contexts needed for 300 rows
    expected = capture(smollm2, corpus.tokens[:n], hooks)
    mask = corpus.train_mask[:n].clone()
    last = mask[n - 1]
    last[last.nonzero().flatten()[300 - int(mask[: n - 1].sum()) :]] = False  # cut at 300 rows
    for hook in hooks:
        store = open_store(tmp_path / "multi" / hook)
        assert store.n_tokens == 300 and store.dtype == torch.float32
        assert torch.equal(store.activations[:], expected[hook][mask].float())


def test_interrupted_harvest_resumes_where_it_stopped(smollm2, corpus, tmp_path, monkeypatch):
    reference = harvest(smollm2, corpus, HOOK, tmp_path / "ref", shard_tokens=256, batch_contexts=2, progress=False)[
        HOOK
    ]
    calls = {"n": 0}
    real_capture = harvest_module.capture

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 0 = contexts 0-3 = 2 calls; fail inside shard 1
            raise KeyboardInterrupt
        return real_capture(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "capture", flaky)
    with pytest.raises(KeyboardInterrupt):
        harvest(smollm2, corpus, HOOK, tmp_path / "s", shard_tokens=256, batch_contexts=2, progress=False)
    with pytest.raises(ValueError, match="resume"):
        open_store(tmp_path / "s")
    calls["n"] = 100
    resumed = harvest(smollm2, corpus, HOOK, tmp_path / "s", shard_tokens=256, batch_contexts=2, progress=False)[HOOK]
    assert calls["n"] == 100 + 4  # shards 1 and 2 only: shard 0 was kept
    assert torch.equal(resumed.activations[:], reference.activations[:])
    ref_manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"] == ref_manifest["shards"]


def test_live_activations_match_the_store(smollm2, corpus, tmp_path):
    store = harvest(smollm2, corpus, HOOK, tmp_path / "s", batch_contexts=4, progress=False)[HOOK]  # same batches
    live = LiveActivations(smollm2, corpus, HOOK, contexts_per_chunk=4, window_chunks=2)
    assert live.d_in == 576 and live.n_tokens == store.n_tokens
    rows = torch.cat(list(live.iterate_once(100)))
    assert torch.equal(rows, store.activations[:].float())
    one = [next(b) for b in [live.batches(64, seed=3)] for _ in range(3)]
    two = [live.batches(64, seed=3, rank=r, world_size=2) for r in range(2)]
    for batch in one:
        assert batch.dtype == torch.float32
        assert torch.equal(torch.cat([next(b) for b in two]), batch)


def test_end_to_end_topk_sae_explains_held_out_activations(smollm2, documents, tmp_path):
    import saekit

    corpus = tokenize(documents, smollm2.tokenizer, context_size=128, max_contexts=160)
    train, held_out = corpus.split(0.2, seed=0)
    train_store = harvest(smollm2, train, HOOK, tmp_path / "train", progress=False)[HOOK]
    held_store = harvest(smollm2, held_out, HOOK, tmp_path / "held_out", progress=False)[HOOK]
    sae = saekit.create("topk", d_in=train_store.d_in, d_sae=4 * train_store.d_in, k=32)
    saekit.train(sae, saekit.open_store(tmp_path / "train"), steps=150, batch_size=1024, progress=False)
    metrics = saekit.evaluate(sae, held_store)
    assert metrics["explained_variance"] > 0.5, metrics


@pytest.mark.slow
def test_harvest_overwrite_keeps_what_the_user_kept_there(tmp_path, capsys):
    from saekit.app.cli import main

    out = tmp_path / "store"

    def harvest_cli(tokens: int, *extra: str) -> int:
        return main(
            [
                "harvest",
                "--hook",
                "layers.2.resid_post",
                "--tokens",
                str(tokens),
                "--context-size",
                "64",
                "--out",
                str(out),
                *extra,
            ]
        )

    assert harvest_cli(300) == 0
    (out / "README.txt").write_text("notes about this store")
    assert harvest_cli(300) == 0 and "300 tokens" in capsys.readouterr().out  # the same settings: reused as it is
    assert harvest_cli(200) == 2
    err = capsys.readouterr().err
    assert "n_tokens: 300 -> 200" in err and "--overwrite" in err
    assert harvest_cli(200, "--overwrite") == 0
    assert open_store(out).n_tokens == 200
    assert (out / "README.txt").read_text() == "notes about this store"


def test_every_name_saekit_data_exports_resolves():
    import saekit.data

    for name in saekit.data.__all__:
        assert getattr(saekit.data, name) is not None, name
