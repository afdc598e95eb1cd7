"""SAEs on disk, saekit's and other libraries', behind one function:

    saekit.load("runs/demo/sae")                     saekit's own folder (SAELens loads it too)
    saekit.load("path/to/saelens_folder")            SAELens 6: inference and training folders
    saekit.load("checkpoints/run/layers.5")          EleutherAI sparsify, one hookpoint's folder
    saekit.load("trainer_0")                         dictionary_learning: ae.pt + config.json
    saekit.load("layer_20/width_16k/average_l0_71")  Gemma Scope's params.npz
    saekit.load("hf://org/repo/path/in/repo")        a folder of a Hugging Face Hub repo
    saekit.load("saelens://release/sae_id")          an SAE of SAELens's pretrained registry

The format is detected from the folder's files (``detect``); one module per format
knows its keys and layouts, and every reader checks what it reads before allocating.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..sae.base import SparseAutoencoder
from . import saekit as native
from .errors import FormatError

FORMATS = ("saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope")


def detect(path: Path) -> str:
    """The format of an SAE folder, from its files; FormatError saying what was found."""
    if not path.exists():
        raise FormatError(f"{path} is not an SAE folder: it does not exist.")
    if not path.is_dir():
        raise FormatError(
            f"{path} is not an SAE folder (expected a folder holding cfg.json and sae_weights.safetensors)."
        )
    names = {p.name for p in path.iterdir()}
    if "cfg.json" in names:
        raw = native.read_config(path)
        if native.is_saekit_folder(raw):
            return "saekit"
        if "sae.safetensors" in names and "sae_weights.safetensors" not in names:
            return "sparsify"
        from .saelens import is_saelens_folder

        if is_saelens_folder(raw):
            return "saelens"
        raise FormatError(
            f"{path / 'cfg.json'} is not a config saekit knows (neither saekit's, SAELens's nor sparsify's keys)."
        )
    if "ae.pt" in names:
        return "dictionary_learning"
    if "params.npz" in names:
        return "gemma_scope"
    inner = sorted(
        p.name for p in path.iterdir() if p.is_dir() and ((p / "cfg.json").is_file() or (p / "ae.pt").is_file())
    )
    if inner:
        shown = ", ".join(inner[:6]) + (", ..." if len(inner) > 6 else "")
        raise FormatError(f"{path} holds several SAEs ({shown}); load one of them, e.g. {path / inner[0]}.")
    raise FormatError(
        f"{path} is not an SAE folder: it has no cfg.json (saekit, SAELens, sparsify), ae.pt "
        "(dictionary_learning) or params.npz (Gemma Scope)."
    )


def load(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE at ``source`` (see the module docstring), in eval mode, float32, on ``device``.
    A foreign SAE is converted to the saekit SAE that computes the same features and
    reconstructions; its cfg.provenance says where it came from."""
    text = os.fspath(source)
    if text.startswith(("hf://", "saelens://")):
        from .hub import fetch

        return load(fetch(text), device=device)
    path = Path(text).expanduser()
    kind = detect(path)
    if kind == "saekit":
        return native.load_sae(path, device=device)
    if kind == "saelens":
        from .saelens import load_folder

        sae = load_folder(path, native.read_config(path))
    elif kind == "sparsify":
        from .sparsify import load_folder

        sae = load_folder(path)
    elif kind == "dictionary_learning":
        from .dictionary_learning import load_folder

        sae = load_folder(path)
    else:
        from .gemma_scope import load_folder

        sae = load_folder(path)
    return sae.to(device).eval()


def _register_writer() -> None:
    """SAEs save themselves (``sae.save(path)``) in saekit's folder format, which this layer
    defines; the SAE layer below knows no file format."""
    SparseAutoencoder._folder_writer = staticmethod(native.save_sae)


_register_writer()

__all__ = ["FORMATS", "FormatError", "detect", "load"]
