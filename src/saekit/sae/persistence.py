"""An SAE on disk is a folder: ``cfg.json`` and ``sae_weights.safetensors``.

No pickle: loading reads JSON and raw tensors and never runs code from the files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from .base import CONFIG_FILE, WEIGHTS_FILE
from .config import ConfigError, SAEConfig

if TYPE_CHECKING:
    from .base import SparseAutoencoder


class SAELoadError(ValueError):
    """An SAE folder cannot be read; the message says which file and why."""


def save_sae(sae: "SparseAutoencoder", path: str | Path, *, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another folder or pass overwrite=True to replace it.")
    cfg = sae.config_for_save()
    tensors = {name: t.to("cpu", getattr(torch, cfg.dtype)) if t.is_floating_point() else t.cpu()
               for name, t in sae.state_for_save().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(cfg.to_json() + "\n")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "saekit_arch": cfg.arch})
    return path


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> "SparseAutoencoder":
    from . import SAE_CLASSES

    path = Path(path)
    cfg_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise SAELoadError(f"{path} is not an SAE folder (expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}).")
    for needed in (cfg_path, weights_path):
        if not needed.is_file():
            raise SAELoadError(f"{path} has no {needed.name}; an SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as error:
        raise SAELoadError(f"{cfg_path} is not valid JSON: {error}") from None
    try:
        cfg = SAEConfig.from_dict(raw, source=str(cfg_path))
    except ConfigError as error:
        raise SAELoadError(str(error)) from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise SAELoadError(f"{weights_path} is not a readable safetensors file: {error}") from None

    sae = SAE_CLASSES[cfg.arch](cfg)
    expected = sae.state_for_save()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SAELoadError(
            f"{weights_path} does not match a {cfg.arch} SAE: missing tensors {missing}, unexpected tensors {unexpected}."
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise SAELoadError(
                f"{weights_path}: tensor {name} has shape {tuple(tensor.shape)}, but cfg.json "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {tuple(expected[name].shape)}."
            )
    sae.load_state_dict({name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}, strict=False)
    return sae.to(device).eval()
