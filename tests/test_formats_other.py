"""sparsify coders saved by sparsify itself, Gemma Scope's npz, and SAEs of a Hugging
Face Hub cache (the real huggingface_hub, offline) load through saekit.load and compute
what they computed where they came from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit.formats import FormatError

D_IN = 16


def inputs(n=128, d=D_IN, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip transcoder", "sae with skip"])
def test_sparsify_coders(tmp_path, kind):
    sparsify = pytest.importorskip("sparsify")
    transcode, skip = kind in ("transcoder", "skip transcoder"), "skip" in kind
    config = sparsify.SparseCoderConfig(num_latents=64, k=5, transcode=transcode, skip_connection=skip)
    torch.manual_seed(1)
    coder = sparsify.SparseCoder(D_IN, config, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for param in coder.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    coder.save_to_disk(tmp_path / "layers.4")
    ours = saekit.load(tmp_path / "layers.4")
    x = inputs()
    with torch.no_grad():
        theirs = coder(x).sae_out
    torch.testing.assert_close(ours(x), theirs, rtol=1e-4, atol=1e-4)
    assert ours.cfg.arch == "topk" and ours.cfg.k == 5 and ours.cfg.hook == "layers.4.resid_post"
    assert bool(ours.cfg.transcoder) == (transcode or skip)


def test_a_sparsify_run_folder_names_its_hookpoints(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    for hookpoint in ("layers.2", "layers.3.mlp"):
        sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=32, k=4)).save_to_disk(tmp_path / hookpoint)
    with pytest.raises(FormatError, match=r"holds several SAEs \(layers.2, layers.3.mlp\).*layers.2"):
        saekit.load(tmp_path)
    assert saekit.load(tmp_path / "layers.3.mlp").cfg.hook == "layers.3.mlp_out"


def gemma_scope_folder(folder: Path, d_in=D_IN, d_sae=48, seed=2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {
        "W_enc": rng.normal(size=(d_in, d_sae)),
        "W_dec": rng.normal(size=(d_sae, d_in)),
        "b_enc": rng.normal(size=d_sae) * 0.1,
        "b_dec": rng.normal(size=d_in),
        "threshold": np.abs(rng.normal(size=d_sae)),
    }
    params = {k: v.astype(np.float32) for k, v in params.items()}
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    return params


def test_gemma_scope_npz(tmp_path):
    params = gemma_scope_folder(tmp_path / "layer_20" / "width_16k" / "average_l0_71")
    ours = saekit.load(tmp_path / "layer_20" / "width_16k" / "average_l0_71")
    x = inputs().numpy()
    z = x @ params["W_enc"] + params["b_enc"]  # Gemma Scope: x itself, ReLU(z)·1[z > θ]
    f = np.maximum(z, 0) * (z > params["threshold"])
    expected = f @ params["W_dec"] + params["b_dec"]
    torch.testing.assert_close(ours(torch.from_numpy(x)), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
    assert ours.cfg.hook == "layers.20.resid_post" and ours.cfg.arch == "jumprelu"


def test_an_npz_that_claims_more_than_it_holds(tmp_path):
    folder = tmp_path / "sae"
    gemma_scope_folder(folder)
    import zipfile

    with zipfile.ZipFile(folder / "params.npz", "a") as archive:  # a header promising a huge array
        header = (
            b"\x93NUMPY\x01\x00" + b"v\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 1000), }"
        )
        archive.writestr("W_big.npy", header.ljust(128, b" "))
    with pytest.raises(FormatError, match="W_big claims shape"):
        saekit.load(folder)


def hub_cache(root: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """A Hugging Face Hub cache folder, laid out as huggingface_hub lays one out (blobs by
    content, snapshot links, refs/main)."""
    import hashlib

    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_an_sae_from_the_hub_cache_offline(tmp_path, offline_hub):
    sae = saekit.create("topk", d_in=D_IN, d_sae=32, k=4, seed=3)
    sae.save(tmp_path / "sae")
    files = {f"blocks.3/{p.name}": p.read_bytes() for p in (tmp_path / "sae").iterdir()}
    hub_cache(offline_hub, "someone/saes", files)
    loaded = saekit.load("hf://someone/saes/blocks.3")
    x = inputs()
    assert torch.equal(loaded(x), sae(x))
    with pytest.raises(FormatError, match="repo someone/saes has no folder 'blocks.9'"):
        saekit.load("hf://someone/saes/blocks.9")
    with pytest.raises(FormatError, match="someone/other is not in the local Hub cache and HF_HUB_OFFLINE is set"):
        saekit.load("hf://someone/other/x")


def test_a_saelens_release_from_its_registry_offline(tmp_path, offline_hub, monkeypatch):
    params = gemma_scope_folder(tmp_path / "gs")
    hub_cache(
        offline_hub,
        "google/gemma-scope-2b-pt-res",
        {"layer_20/width_16k/average_l0_71/params.npz": (tmp_path / "gs" / "params.npz").read_bytes()},
    )
    sae = saekit.create("relu", d_in=D_IN, d_sae=32, l1_coefficient=1.0, seed=4)
    sae.save(tmp_path / "mine")
    hub_cache(offline_hub, "someone/relu-saes", {f"l3/{p.name}": p.read_bytes() for p in (tmp_path / "mine").iterdir()})
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(
        "gemma-scope-2b-pt-res-canonical:\n  repo_id: google/gemma-scope-2b-pt-res\n  model: gemma-2-2b\n"
        "  conversion_func: gemma_2\n  saes:\n  - id: layer_20/width_16k/canonical\n"
        "    path: layer_20/width_16k/average_l0_71\n"
        "my-relus:\n  repo_id: someone/relu-saes\n  model: smollm2\n  conversion_func: null\n"
        "  saes:\n  - id: blocks.3.hook_resid_post\n    path: l3\n"
        "llama-scope:\n  repo_id: fnlp/x\n  model: llama\n  conversion_func: llama_scope\n"
        "  saes:\n  - id: a\n    path: a\n"
    )
    monkeypatch.setenv("SAEKIT_SAELENS_REGISTRY", str(registry))
    gemma = saekit.load("saelens://gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")
    assert gemma.cfg.arch == "jumprelu" and gemma.d_sae == 48
    torch.testing.assert_close(gemma.W_enc, torch.from_numpy(params["W_enc"]))
    mine = saekit.load("saelens://my-relus/blocks.3.hook_resid_post")
    assert torch.equal(mine(inputs()), sae(inputs()))
    with pytest.raises(FormatError, match="has no SAE 'layer_99'.*layer_20/width_16k/canonical"):
        saekit.load("saelens://gemma-scope-2b-pt-res-canonical/layer_99")
    with pytest.raises(FormatError, match="needs SAELens's 'llama_scope' conversion"):
        saekit.load("saelens://llama-scope/a")


def test_unknown_folders_say_what_they_lack(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no cfg.json .* ae.pt .* params.npz"):
        saekit.load(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "cfg.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(FormatError, match="not a config saekit knows"):
        saekit.load(tmp_path / "odd")
