"""dictionary_learning (saprmarks) checkpoints: ``ae.pt``, a state dict saved with
torch.save, beside the trainer's ``config.json`` (``{"trainer": {"dict_class": ...}}``).

ae.pt is read with ``torch.load(weights_only=True)`` and nothing looser: it must hold
tensors only, and anything that needs more is refused. Each dictionary class maps to the
saekit architecture computing the same f and x̂ (D = activation_dim, F = dict_size):

    AutoEncoder            bias, encoder.weight [F, D], encoder.bias, decoder.weight [D, F]  → relu
    GatedAutoEncoder       decoder_bias, encoder.weight, decoder.weight, r_mag, gate_bias,
                           mag_bias                                                          → gated
    AutoEncoderTopK        b_dec, encoder.weight, encoder.bias, decoder.weight, k, threshold → topk
    BatchTopKSAE           the same (encodes by its threshold)                                → batchtopk
    MatryoshkaBatchTopKSAE W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes             → matryoshka_batchtopk
    JumpReluAutoEncoder    W_enc, b_enc, W_dec, b_dec, threshold [F] (x not centred)          → jumprelu
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..sae.base import SparseAutoencoder
from ..sae.config import SAEConfig
from ..sae.registry import architecture
from .errors import FormatError
from .tensorfile import read_json

WEIGHTS_FILE = "ae.pt"
CLASSES = (
    "AutoEncoder",
    "GatedAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def load_folder(path: Path) -> SparseAutoencoder:
    config = _config(path)
    trainer = config.get("trainer", {}) if isinstance(config.get("trainer"), dict) else {}
    dict_class = trainer.get("dict_class")
    state = _state(path / WEIGHTS_FILE)
    if dict_class is None:  # no config.json: tell the class from the tensors
        dict_class = _class_from_keys(state, path)
    if dict_class not in CLASSES:
        raise FormatError(
            f"{path}: dictionary_learning's {dict_class!r} is not a class saekit reads ({', '.join(CLASSES)})."
        )
    arch, tensors, options = _convert(dict_class, state, path)
    d_in, d_sae = tensors["W_enc"].shape
    cfg = SAEConfig.from_dict(
        {
            "arch": arch,
            "d_in": d_in,
            "d_sae": d_sae,
            **options,
            "hook": _hook(trainer),
            "model": trainer.get("lm_name"),
            "provenance": {"format": "dictionary_learning", "dict_class": dict_class, "trainer": trainer},
        },
        source=str(path / "config.json"),
    )
    cls = architecture(arch)
    expected = cls.expected_tensors(cfg)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if shapes != expected:
        raise FormatError(
            f"{path / WEIGHTS_FILE}: its tensors {shapes} do not make a {dict_class} (expected {expected})."
        )
    return cls.from_tensors(cfg, tensors)


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    return read_json(file, what="a dictionary_learning config.json") if file.is_file() else {}


def _state(file: Path) -> dict[str, Tensor]:
    size = file.stat().st_size
    if not zipfile.is_zipfile(file):
        raise FormatError(f"{file} ({size:,} bytes) is not a torch.save archive.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FormatError(
            f"{file} cannot be read as tensors alone (torch.load with weights_only=True refused it: "
            f"{first[:200]}); saekit loads nothing that needs more."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise FormatError(f"{file} holds a {type(state).__name__}, not a state dict of tensors.")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FormatError(f"{file}: tensor {name} holds NaN or infinite values.")
    return state


def _class_from_keys(state: dict[str, Tensor], path: Path) -> str:
    keys = set(state)
    for dict_class, needed in (
        ("GatedAutoEncoder", {"gate_bias", "mag_bias", "r_mag"}),
        ("MatryoshkaBatchTopKSAE", {"group_sizes"}),
        ("AutoEncoderTopK", {"k", "encoder.weight"}),
        ("JumpReluAutoEncoder", {"W_enc", "threshold"}),
        ("AutoEncoder", {"bias", "encoder.weight", "decoder.weight"}),
    ):
        if needed <= keys:
            return dict_class
    raise FormatError(
        f"{path}: no config.json, and the tensors of ae.pt ({sorted(keys)}) are no dictionary_learning class."
    )


def _need(state: dict[str, Tensor], names: tuple[str, ...], dict_class: str, path: Path) -> list[Tensor]:
    missing = [name for name in names if name not in state]
    if missing:
        raise FormatError(f"{path / WEIGHTS_FILE}: a {dict_class} needs tensors {missing}, which it lacks.")
    return [state[name].float() if state[name].is_floating_point() else state[name] for name in names]


def _convert(dict_class: str, state: dict[str, Tensor], path: Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    if dict_class == "AutoEncoder":
        bias, W, b, D = _need(state, ("bias", "encoder.weight", "encoder.bias", "decoder.weight"), dict_class, path)
        W_dec = D.t()
        unit = torch.allclose(W_dec.norm(dim=1), torch.ones(W_dec.shape[0]), atol=1e-4)
        return (
            "relu",
            {"W_enc": W.t(), "b_enc": b, "W_dec": W_dec, "b_dec": bias},
            {"l1_coefficient": 0.0, "decoder_norm": "unit" if unit else "weighted"},
        )
    if dict_class == "GatedAutoEncoder":
        b_dec, W, D, r_mag, gate, mag = _need(
            state,
            ("decoder_bias", "encoder.weight", "decoder.weight", "r_mag", "gate_bias", "mag_bias"),
            dict_class,
            path,
        )
        W_dec = D.t()
        unit = torch.allclose(W_dec.norm(dim=1), torch.ones(W_dec.shape[0]), atol=1e-4)
        return (
            "gated",
            {"W_enc": W.t(), "W_dec": W_dec, "b_dec": b_dec, "b_gate": gate, "r_mag": r_mag, "b_mag": mag},
            {"l1_coefficient": 0.0, "decoder_norm": "unit" if unit else "weighted"},
        )
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        b_dec, W, b, D, k, threshold = _need(
            state, ("b_dec", "encoder.weight", "encoder.bias", "decoder.weight", "k", "threshold"), dict_class, path
        )
        tensors = {"W_enc": W.t(), "b_enc": b, "W_dec": D.t(), "b_dec": b_dec}
        return _topk_like(dict_class, tensors, k, threshold, path)
    if dict_class == "MatryoshkaBatchTopKSAE":
        W_enc, b_enc, W_dec, b_dec, k, threshold, groups = _need(
            state, ("W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"), dict_class, path
        )
        arch, tensors, options = _topk_like(
            dict_class, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, k, threshold, path
        )
        sizes = [int(g) for g in groups.reshape(-1).tolist()]
        if not sizes or min(sizes) < 1 or sum(sizes) != W_enc.shape[1]:
            raise FormatError(
                f"{path / WEIGHTS_FILE}: group_sizes {sizes} do not add up to the {W_enc.shape[1]} latents."
            )
        return "matryoshka_batchtopk", tensors, {**options, "group_sizes": sizes}
    W_enc, b_enc, W_dec, b_dec, threshold = _need(
        state, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), dict_class, path
    )
    # ReLU(z·1[z > θ]) = z·1[z > max(θ, 0)]: clamping θ at 0 changes nothing it computes.
    return (
        "jumprelu",
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold.clamp_min(0)},
        {"l0_coefficient": 0.0, "apply_b_dec_to_input": False},
    )


def _topk_like(dict_class: str, tensors: dict[str, Tensor], k: Tensor, threshold: Tensor, path: Path):
    k_value = int(k.reshape(-1)[0]) if k.numel() else 0
    if k_value < 1:
        raise FormatError(f"{path / WEIGHTS_FILE}: k is {k_value}; a {dict_class} keeps at least one latent.")
    if dict_class == "AutoEncoderTopK":  # it encodes by its per-token top k (use_threshold defaults to False)
        return "topk", tensors, {"k": min(k_value, tensors["W_enc"].shape[1])}
    theta = float(threshold.reshape(-1)[0])
    if theta < 0:
        raise FormatError(
            f"{path / WEIGHTS_FILE}: this {dict_class} has no inference threshold yet (threshold "
            f"{theta}); dictionary_learning sets it during training, after threshold_start_step."
        )
    return "batchtopk", {**tensors, "threshold": torch.tensor(theta)}, {"k": min(k_value, tensors["W_enc"].shape[1])}


def _hook(trainer: dict[str, Any]) -> str | None:
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name")
    if not isinstance(layer, int):
        return None
    text = str(submodule or "")
    site = "mlp_out" if "mlp" in text else "attn_out" if "attn" in text else "resid_post"
    return f"layers.{layer}.{site}"
