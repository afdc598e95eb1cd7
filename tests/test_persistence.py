"""Save/load round trips, clear errors on broken folders, and exact conversion to JumpReLU."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit._runtime.errors import FolderError
from saekit.formats import FormatError as SAELoadError
from saekit.sae import ConfigError

OPTIONS = {
    "relu": {"l1_coefficient": 1.0},
    "gated": {"l1_coefficient": 1.0},
    "jumprelu": {"l0_coefficient": 1.0},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
}


def random_sae(arch, seed=0, **extra):
    sae = saekit.create(arch, d_in=10, d_sae=30, seed=seed, **OPTIONS[arch], **extra)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        if arch == "jumprelu":
            sae.threshold.abs_()
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae.eval()


@pytest.mark.parametrize("arch", list(OPTIONS))
def test_round_trip_is_exact(tmp_path, arch):
    sae = random_sae(arch, feature_scale=True)
    sae.save(tmp_path / "sae")
    loaded = saekit.load(tmp_path / "sae")
    assert loaded.cfg == sae.config_for_save()
    for name, tensor in sae.state_for_save().items():
        assert torch.equal(loaded.state_for_save()[name], tensor), name
    x = torch.randn(16, 10)
    assert torch.equal(loaded(x), sae(x))


def test_saelens_tensor_names_and_layouts(tmp_path):
    random_sae("gated").save(tmp_path / "gated")
    tensors = load_file(str(tmp_path / "gated" / "sae_weights.safetensors"))
    assert {name: tuple(t.shape) for name, t in tensors.items()} == {
        "W_enc": (10, 30),
        "W_dec": (30, 10),
        "b_dec": (10,),
        "b_gate": (30,),
        "r_mag": (30,),
        "b_mag": (30,),
    }
    random_sae("jumprelu").save(tmp_path / "jumprelu")
    assert set(load_file(str(tmp_path / "jumprelu" / "sae_weights.safetensors"))) == {
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
        "threshold",
    }


def test_save_refuses_to_overwrite(tmp_path):
    random_sae("topk").save(tmp_path / "sae")
    with pytest.raises(FolderError, match="overwrite=True"):
        random_sae("topk").save(tmp_path / "sae")
    random_sae("topk", seed=5).save(tmp_path / "sae", overwrite=True)


def test_malformed_config_is_a_clear_error(tmp_path):
    random_sae("relu").save(tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg_path.write_text("{not json")
    with pytest.raises(SAELoadError, match="not valid JSON"):
        saekit.load(tmp_path / "sae")
    random_sae("relu").save(tmp_path / "sae", overwrite=True)
    raw = json.loads(cfg_path.read_text())
    cfg = raw["saekit"]["config"]

    def write(config):
        cfg_path.write_text(json.dumps({**raw, "saekit": {**raw["saekit"], "config": config}}))

    write({**cfg, "l1_coeficient": 2.0})
    with pytest.raises(SAELoadError, match="unknown field.*l1_coeficient.*did you mean 'l1_coefficient'"):
        saekit.load(tmp_path / "sae")
    write({**cfg, "d_sae": 31})
    with pytest.raises(SAELoadError, match=r"tensor W_\w+ has shape .* needs"):
        saekit.load(tmp_path / "sae")


def test_missing_tensor_is_a_clear_error(tmp_path):
    random_sae("gated").save(tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    del tensors["r_mag"]
    save_file(tensors, str(weights))
    with pytest.raises(SAELoadError, match=r"missing tensors \['r_mag'\]"):
        saekit.load(tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAELoadError, match="not a readable safetensors"):
        saekit.load(tmp_path / "sae")
    with pytest.raises(SAELoadError, match="not an SAE folder"):
        saekit.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"arch": "relux"}, "not an architecture"),
        ({"k": 0}, "k must be"),
        ({"k": 31}, "k must be"),
        ({"l1_coefficient": -1.0, "arch": "relu", "k": None}, "l1_coefficient must be"),
        ({"arch": "relu", "k": None}, "needs a sparsity level"),
        ({"l1_coefficient": 1.0}, "does not apply"),
        ({"decoder_norm": "weighted"}, "decoder_norm does not apply"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"d_sae": "many"}, "d_sae must be an integer"),
    ],
)
def test_invalid_options_name_the_field(bad, message):
    options = {"arch": "topk", "d_in": 10, "d_sae": 30, "k": 3, **bad}
    with pytest.raises(ConfigError, match=message):
        saekit.create(options.pop("arch"), d_in=options.pop("d_in"), d_sae=options.pop("d_sae"), **options)


@pytest.mark.parametrize("arch", ["gated", "batchtopk", "relu", "jumprelu"])
def test_conversion_to_jumprelu_is_exact(arch):
    sae = random_sae(arch, feature_scale=True)
    converted = saekit.convert(sae, "jumprelu")
    assert converted.cfg.arch == "jumprelu"
    x = torch.randn(512, 10) * 2
    f, f_converted = sae.encode(x), converted.encode(x)
    assert (f > 0).float().mean() > 0.05  # features do fire in this test
    torch.testing.assert_close(f_converted, f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(converted(x), sae(x), rtol=1e-5, atol=1e-5)


def test_topk_cannot_be_converted_exactly():
    with pytest.raises(ValueError, match="no exactly equivalent"):
        saekit.convert(random_sae("topk"), "jumprelu")
