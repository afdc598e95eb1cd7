"""Load an SAE folder (sae/files.py) into the class its cfg.json names.

Every check runs before a weight is allocated: the config is parsed and validated, the
tensors the architecture needs are compared with the safetensors header (names, float
dtypes, shapes, and sizes that the file can hold), then the checksum is verified, then
the tensors are read and checked for non-finite values.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import SparseAutoencoder
from .config import ConfigError, SAEConfig
from .files import CONFIG_FILE, WEIGHTS_FILE, SAELoadError, check_tensors, load_tensors, read_config, read_header
from .registry import architecture


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE saved in folder ``path``, in eval mode, float32, on ``device``."""
    path = Path(path)
    raw, checksums = read_config(path)
    try:
        cfg = SAEConfig.from_dict(raw, source=str(path / CONFIG_FILE))
        cls = architecture(cfg.arch)
        cls.check_config(cfg)
    except ConfigError as error:
        message = str(error)
        raise SAELoadError(message if str(path) in message else f"{path / CONFIG_FILE}: {message}") from None
    weights = path / WEIGHTS_FILE
    header = read_header(weights)
    check_tensors(
        weights, header, cls.expected_tensors(cfg), f"a {cfg.arch} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}"
    )
    tensors = load_tensors(weights, checksums)
    return cls.from_tensors(cfg, tensors).to(device).eval()


__all__ = ["SAELoadError", "load_sae"]
