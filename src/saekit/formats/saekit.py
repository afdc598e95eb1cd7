"""saekit's own SAE folder, which SAELens 6 loads as it is:

    cfg.json                  SAELens's keys (formats/saelens.py), and saekit's own under
                              "saekit": its full config and the sha256 of every file here
    sae_weights.safetensors   the tensors SAELens reads (W_enc [d_in, d_sae], W_dec
                              [d_sae, d_out], b_enc, b_dec, threshold, b_gate, r_mag, b_mag, W_skip)
    saekit_extra.safetensors  what SAELens has no place for, when there is any: a fitted
                              feature scale and the decoder it was folded out of
    sparsity.safetensors      log10 of each feature's firing frequency, as SAELens's Hub
                              folders have it ("sparsity" [d_sae]), when it was measured

Saving writes a new folder whole (built beside it, renamed into place) and replaces an
existing one file by file (the weights first, cfg.json last), never touching files it did
not write. Loading runs every check before a weight is allocated (formats/tensorfile.py)
and gives back, bit for bit, the SAE that was saved. Folders of earlier saekit versions
(cfg.json holding saekit's config at the top level) still load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._runtime.atomic import atomic_path, atomic_write_text
from .._runtime.checksums import sha256_file
from .._runtime.errors import FolderError
from ..sae.base import SparseAutoencoder
from ..sae.config import ConfigError, SAEConfig
from ..sae.hooks import transformer_lens_name
from ..sae.registry import architecture
from . import saelens
from .errors import FormatError
from .tensorfile import check_tensors, load_tensors, read_header, read_json

CONFIG_FILE, WEIGHTS_FILE, SPARSITY_FILE = saelens.CONFIG_FILE, saelens.WEIGHTS_FILE, saelens.SPARSITY_FILE
EXTRA_FILE = "saekit_extra.safetensors"
OWN_FILES = (CONFIG_FILE, WEIGHTS_FILE, EXTRA_FILE, SPARSITY_FILE)
"""Every file a save may write; nothing else in an SAE folder is saekit's."""
BLOCK = "saekit"
FORMAT_VERSION = 2
MAX_CONFIG_BYTES = 1 << 20
"""A cfg.json is a few kilobytes; a larger one is not an SAE config."""

EMBEDDED_MODELS = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "default": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}
"""The Hub ids of the embedded models, for other tools' metadata."""


# ---- saving ----------------------------------------------------------------------------------------
def save_sae(
    sae: SparseAutoencoder, path: str | os.PathLike, *, overwrite: bool = False, feature_frequency: Tensor | None = None
) -> Path:
    """Write ``sae`` as a folder (see the module docstring); ``feature_frequency`` [d_sae],
    each feature's firing rate, becomes sparsity.safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path} is a file, not an SAE folder; choose another path.")
    if path.exists() and not overwrite:
        raise FolderError(f"{path} already exists; choose another folder or pass overwrite=True to replace its SAE.")
    cfg = sae.config_for_save()
    dtype = getattr(torch, cfg.dtype)
    own = {name: t.to("cpu", dtype) if t.is_floating_point() else t.cpu() for name, t in sae.state_for_save().items()}
    weights, extra = saelens.to_saelens_tensors(cfg, own)
    files: dict[str, dict[str, Tensor]] = {WEIGHTS_FILE: weights}
    if extra:
        files[EXTRA_FILE] = extra
    if feature_frequency is not None:
        frequency = feature_frequency.detach().float().cpu().reshape(-1)
        if frequency.shape != (cfg.d_sae,):
            raise FolderError(f"feature_frequency has {frequency.numel()} values for {cfg.d_sae} features.")
        files[SPARSITY_FILE] = {"sparsity": torch.log10(frequency + 1e-10)}
    header = saelens.header(cfg, saelens_metadata(cfg))

    def write(folder: Path) -> dict[str, str]:
        sums = {}
        for name, tensors in files.items():
            with atomic_path(folder / name) as tmp:
                save_file(
                    {k: v.contiguous() for k, v in tensors.items()},
                    str(tmp),
                    metadata={"format": "pt", "saekit_arch": cfg.arch},
                )
                sums[name] = sha256_file(tmp)
        return sums

    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.mkdir()
            _write_config(tmp, header, cfg, write(tmp))
        return path
    sums = write(path)
    _write_config(path, header, cfg, sums)
    for name in OWN_FILES:  # a file an earlier save wrote that this one does not
        if name not in files and name != CONFIG_FILE:
            (path / name).unlink(missing_ok=True)
    return path


def _write_config(folder: Path, header: dict[str, Any], cfg: SAEConfig, sums: dict[str, str]) -> None:
    block = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "checksums": sums}
    atomic_write_text(folder / CONFIG_FILE, json.dumps({**header, BLOCK: block}, indent=2) + "\n")


def saelens_metadata(cfg: SAEConfig) -> dict[str, Any]:
    """What other tools read about the SAE's model and data (SAELens's metadata block)."""
    provenance = cfg.provenance or {}
    meta: dict[str, Any] = {
        "model_name": EMBEDDED_MODELS.get(str(cfg.model), cfg.model),
        "hook_name": transformer_lens_name(cfg.hook),
        "context_size": provenance.get("context_size"),
        "prepend_bos": provenance.get("prepend_bos", True),
        "exclude_special_tokens": provenance.get("exclude_special_tokens"),
    }
    if cfg.transcoder:
        meta["hook_name_out"] = transformer_lens_name(cfg.hook_out)
    return {key: value for key, value in meta.items() if value is not None}


# ---- loading ---------------------------------------------------------------------------------------
def read_config(path: Path) -> dict[str, Any]:
    """The JSON object of an SAE folder's cfg.json, after the checks that need no trust."""
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise FormatError(f"{path} is not an SAE folder (expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}).")
    if not cfg_path.is_file():
        raise FormatError(f"{path} has no {CONFIG_FILE}; an SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    return read_json(cfg_path, max_bytes=MAX_CONFIG_BYTES, what="an SAE's cfg.json")


def is_saekit_folder(raw: dict[str, Any]) -> bool:
    return isinstance(raw.get(BLOCK), dict) or ("arch" in raw and "d_in" in raw)


def load_sae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE saved in folder ``path`` by saekit, in eval mode, float32, on ``device``."""
    path = Path(path)
    raw = read_config(path)
    if not is_saekit_folder(raw):
        raise FormatError(
            f"{path / CONFIG_FILE} is not a saekit SAE config (no {BLOCK!r} block); load other "
            "libraries' folders with saekit.load."
        )
    block = raw.get(BLOCK)
    legacy = not isinstance(block, dict)
    fields = raw if legacy else block.get("config")
    sums = (raw.get("saekit_checksums") if legacy else block.get("checksums")) or {}
    if not isinstance(fields, dict) or not isinstance(sums, dict):
        raise FormatError(f"{path / CONFIG_FILE}: the saekit block is damaged (no config or checksums table).")
    fields = {k: v for k, v in fields.items() if k != "saekit_checksums"}
    cfg, cls = _config(fields, path)
    expected = cls.expected_tensors(cfg)
    weights_file = path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise FormatError(f"{path} has no {WEIGHTS_FILE}; an SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    what = f"cfg.json (a {cfg.arch} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae})"
    if legacy:
        check_tensors(weights_file, read_header(weights_file), expected, what)
        tensors = load_tensors(weights_file, sums.get(WEIGHTS_FILE))
    else:
        extra_file = path / EXTRA_FILE
        has_extra = "feature_scale" in expected
        check_tensors(weights_file, read_header(weights_file), saelens.saved_shapes(expected), what)
        if has_extra:
            if not extra_file.is_file():
                raise FormatError(f"{path} has no {EXTRA_FILE}, which holds this SAE's feature scale.")
            check_tensors(
                extra_file, read_header(extra_file), {"feature_scale": (cfg.d_sae,), "W_dec": expected["W_dec"]}, what
            )
        for name in (WEIGHTS_FILE, EXTRA_FILE) if has_extra else (WEIGHTS_FILE,):
            if name not in sums:
                raise FormatError(f"{path / CONFIG_FILE} records no sha256 for {name}; the folder is damaged.")
        weights = load_tensors(weights_file, sums[WEIGHTS_FILE])
        extra = load_tensors(extra_file, sums[EXTRA_FILE]) if has_extra else {}
        tensors = saelens.from_saelens_tensors(expected, weights, extra)
    return cls.from_tensors(cfg, tensors).to(device).eval()


def _config(fields: dict[str, Any], path: Path) -> tuple[SAEConfig, type[SparseAutoencoder]]:
    try:
        cfg = SAEConfig.from_dict(fields, source=str(path / CONFIG_FILE))
        cls = architecture(cfg.arch)
        cls.check_config(cfg)
    except ConfigError as error:
        message = str(error)
        raise FormatError(message if str(path) in message else f"{path / CONFIG_FILE}: {message}") from None
    return cfg, cls
