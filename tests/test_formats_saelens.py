"""saekit ↔ SAELens 6, with SAELens itself: what saekit saves, SAELens loads and computes
alike; what SAELens trains and saves, saekit loads and computes alike; saekit → SAELens
format → saekit is bit-exact."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import saekit

sae_lens = pytest.importorskip("sae_lens")
warnings.filterwarnings("ignore", module="sae_lens")

D_IN, D_SAE = 12, 40
OPTIONS = {
    "relu": {"l1_coefficient": 1.0},
    "gated": {"l1_coefficient": 1.0},
    "jumprelu": {"l0_coefficient": 1.0},
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "matryoshka_batchtopk": {"k": 4, "group_sizes": [8, 12, 20]},
}


def randomised(sae, seed=1):
    """Every parameter random (not the tidy initialisation), thresholds where features fire."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(sae.threshold.abs() if sae.threshold.ndim else torch.tensor(0.3))
    return sae.eval()


def inputs(n=256, d=D_IN, seed=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2


def close(a, b, what):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4, msg=what)


# ---- saekit → SAELens ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(OPTIONS))
@pytest.mark.parametrize("feature_scale", [False, True])
def test_saelens_loads_what_saekit_saves(tmp_path, arch, feature_scale):
    sae = randomised(saekit.create(arch, d_in=D_IN, d_sae=D_SAE, feature_scale=feature_scale, **OPTIONS[arch]))
    sae.cfg.hook, sae.cfg.model = "layers.3.resid_post", "smollm2"
    sae.save(tmp_path / "sae", feature_frequency=torch.rand(D_SAE))
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    expected = {
        "relu": "StandardSAE",
        "gated": "GatedSAE",
        "jumprelu": "JumpReLUSAE",
        "topk": "TopKSAE",
        "batchtopk": "JumpReLUSAE",
        "matryoshka_batchtopk": "JumpReLUSAE",
    }[arch]
    assert type(theirs).__name__ == expected
    x = inputs()
    close(theirs.encode(x), sae.encode(x), "features")  # a feature scale is folded into SAELens's decoder rows
    close(theirs.decode(theirs.encode(x)), sae(x), "reconstructions")
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True


@pytest.mark.parametrize("arch", list(OPTIONS))
def test_round_trip_through_the_saelens_format_is_bit_exact(tmp_path, arch):
    sae = randomised(saekit.create(arch, d_in=D_IN, d_sae=D_SAE, feature_scale=True, **OPTIONS[arch]))
    sae.cfg.provenance = {"steps": 7, "note": "kept"}
    sae.save(tmp_path / "sae")
    back = saekit.load(tmp_path / "sae")
    assert back.cfg == sae.config_for_save()
    for name, tensor in sae.state_for_save().items():
        assert torch.equal(back.state_for_save()[name], tensor), name
    x = inputs()
    assert torch.equal(back(x), sae(x))


def test_sparsity_file_is_saelens_log10_density(tmp_path):
    sae = randomised(saekit.create("topk", d_in=D_IN, d_sae=D_SAE, k=4))
    frequency = torch.rand(D_SAE)
    sae.save(tmp_path / "sae", feature_frequency=frequency)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "sae" / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(stored, torch.log10(frequency + 1e-10))


SAEKIT_TRANSCODERS = {
    ("relu", True): ("Transcoder", {"l1_coefficient": 1.0}),
    ("relu", "skip"): ("SkipTranscoder", {"l1_coefficient": 1.0}),
    ("jumprelu", True): ("JumpReLUTranscoder", {"l0_coefficient": 1.0}),
    ("jumprelu", "skip"): ("JumpReLUSkipTranscoder", {"l0_coefficient": 1.0}),
    ("batchtopk", "skip"): ("JumpReLUSkipTranscoder", {"k": 4}),
    ("matryoshka_batchtopk", True): ("JumpReLUTranscoder", {"k": 4, "group_sizes": [10, 30]}),
    ("matryoshka_batchtopk", "skip"): ("JumpReLUSkipTranscoder", {"k": 4, "group_sizes": [10, 30]}),
}


@pytest.mark.parametrize("arch,transcoder", list(SAEKIT_TRANSCODERS))
def test_saelens_loads_saekit_transcoders(tmp_path, arch, transcoder):
    expected, options = SAEKIT_TRANSCODERS[(arch, transcoder)]
    sae = saekit.create(arch, d_in=D_IN, d_sae=D_SAE, d_out=7, transcoder=transcoder, **options)
    sae = randomised(sae)
    sae.cfg.hook, sae.cfg.hook_out, sae.cfg.model = "layers.1.mlp_in", "layers.1.mlp_out", "smollm2"
    sae.save(tmp_path / "tc")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    assert type(theirs).__name__ == expected
    x = inputs()
    close(theirs.encode(x), sae.encode(x), f"{arch} {transcoder} features")
    close(theirs.decode(theirs.encode(x)) if transcoder is True else theirs(x), sae(x), f"{arch} {transcoder} outputs")
    assert theirs.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"


# ---- SAELens → saekit ---------------------------------------------------------------------------
def train_saelens(kind: str, **extra):
    """A SAELens training SAE of ``kind``, trained a few steps on random data by SAELens."""
    from sae_lens.saes.sae import SAEMetadata, TrainStepInput

    classes = {
        "standard": ("StandardTrainingSAE", "StandardTrainingSAEConfig", {}),
        "gated": ("GatedTrainingSAE", "GatedTrainingSAEConfig", {}),
        "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig", {}),
        "topk": ("TopKTrainingSAE", "TopKTrainingSAEConfig", {"k": 4}),
        "batchtopk": ("BatchTopKTrainingSAE", "BatchTopKTrainingSAEConfig", {"k": 4}),
        "matryoshka_batchtopk": (
            "MatryoshkaBatchTopKTrainingSAE",
            "MatryoshkaBatchTopKTrainingSAEConfig",
            {"k": 4, "matryoshka_widths": [10, 20, D_SAE]},
        ),
    }
    sae_class, cfg_class, options = classes[kind]
    cfg = getattr(sae_lens, cfg_class)(
        d_in=D_IN,
        d_sae=D_SAE,
        **options,
        **extra,
        metadata=SAEMetadata(model_name="toy", hook_name="blocks.2.hook_mlp_out"),
    )
    torch.manual_seed(0)
    sae = getattr(sae_lens, sae_class)(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    coefficients = {k: getattr(v, "value", v) for k, v in sae.get_coefficients().items()}
    for step in range(20):
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=inputs(64, seed=step),
                coefficients=coefficients,
                dead_neuron_mask=None,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return sae.eval()


SAELENS_KINDS = ["standard", "gated", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk"]


@pytest.mark.parametrize("kind", SAELENS_KINDS)
@pytest.mark.parametrize("form", ["inference", "training"])
def test_saekit_loads_what_saelens_trains(tmp_path, kind, form):
    theirs = train_saelens(kind)
    folder = tmp_path / form
    (theirs.save_inference_model if form == "inference" else theirs.save_model)(str(folder))
    ours = saekit.load(folder)
    x = inputs()
    if form == "inference" or kind not in ("batchtopk", "matryoshka_batchtopk"):
        reference = sae_lens.SAE.load_from_disk(str(folder)) if form == "inference" else theirs
        features = reference.encode(x)
        close(ours(x), reference.decode(features), f"{kind} ({form}) reconstructions")
    else:  # BatchTopK's training forms: at inference SAELens itself makes them a JumpReLU SAE
        theirs.save_inference_model(str(tmp_path / "inference"))
        reference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
        close(ours(x), reference(x), f"{kind} ({form}) reconstructions")
        assert ours.cfg.arch == kind and ours.cfg.k == 4
        if kind == "matryoshka_batchtopk":  # it keeps training as SAELens trained it
            assert ours.cfg.group_sizes == [10, 10, D_SAE - 20]
    assert ours.cfg.hook == "layers.2.mlp_out" and ours.cfg.model == "toy"
    assert ours.cfg.provenance["format"] == "saelens"


def test_saelens_options_that_change_the_maths(tmp_path):
    """apply_b_dec_to_input false, and the run-time normalisations, computed as SAELens does."""
    for options in (
        {"apply_b_dec_to_input": False},
        {"normalize_activations": "constant_norm_rescale"},
        {"normalize_activations": "layer_norm"},
    ):
        theirs = train_saelens("standard", **options)
        theirs.save_inference_model(str(tmp_path / "s"))
        reference = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
        ours = saekit.load(tmp_path / "s")
        x = inputs()
        close(ours(x), reference(x), str(options))
        close(ours.encode(x), reference.encode(x), str(options))


def test_expected_average_only_in_with_its_scaling_factor(tmp_path):
    """A checkpoint trained on s·x (activation_scaler.json) is read as an SAE of raw x."""
    theirs = train_saelens("topk", normalize_activations="expected_average_only_in")
    theirs.save_model(str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    ours = saekit.load(tmp_path / "ckpt")
    x = inputs()
    close(ours(x), theirs(2.5 * x) / 2.5, "reconstructions of raw x")


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_saelens_transcoders(tmp_path, kind):
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "transcoder": ("Transcoder", "TranscoderConfig"),
        "skip_transcoder": ("SkipTranscoder", "SkipTranscoderConfig"),
        "jumprelu_transcoder": ("JumpReLUTranscoder", "JumpReLUTranscoderConfig"),
    }
    sae_class, cfg_class = classes[kind]
    cfg = getattr(sae_lens, cfg_class)(
        d_in=D_IN,
        d_sae=D_SAE,
        d_out=7,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(
            model_name="toy", hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out"
        ),
    )
    torch.manual_seed(3)
    theirs = getattr(sae_lens, sae_class)(cfg)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if hasattr(theirs, "threshold"):
            theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / "t"))
    ours = saekit.load(tmp_path / "t")
    assert ours.cfg.transcoder == ("skip" if "skip" in kind else True) and ours.d_out == 7
    x = inputs()
    close(ours(x), theirs(x), kind)
    ours.save(tmp_path / "again")  # and back: SAELens loads saekit's transcoder as its own
    close(sae_lens.SAE.load_from_disk(str(tmp_path / "again"))(x), theirs(x), f"{kind} round trip")
