"""The sparse autoencoders, one small module per architecture, and the registry that
maps a name to its class."""
from __future__ import annotations

import dataclasses

import torch

from .base import LossOutput, SparseAutoencoder
from .config import ARCHITECTURES, ConfigError, SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
from .persistence import SAELoadError, load_sae
from .relu import ReluSAE
from .topk import BatchTopKSAE, TopKSAE

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls for cls in (ReluSAE, GatedSAE, JumpReluSAE, TopKSAE, BatchTopKSAE)
}
assert tuple(SAE_CLASSES) == ARCHITECTURES


def create(arch: str, *, d_in: int, d_sae: int, seed: int = 0, **options) -> SparseAutoencoder:
    """Make an untrained SAE, e.g. ``create("topk", d_in=576, d_sae=9216, k=32)``.

    ``options`` are fields of :class:`SAEConfig` (l1_coefficient, l0_coefficient, target_l0,
    k, decoder_norm, reconstruction_loss, normalize_activations, ...)."""
    _reject_unknown(options)
    cfg = SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, **options)
    generator = torch.Generator().manual_seed(seed)
    return SAE_CLASSES[cfg.arch](cfg, generator=generator)


def _reject_unknown(options: dict) -> None:
    known = {f.name for f in dataclasses.fields(SAEConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown SAE option(s) {unknown}; known options are {sorted(known - {'arch', 'd_in', 'd_sae'})}.")


__all__ = [
    "ARCHITECTURES", "SAE_CLASSES", "BatchTopKSAE", "ConfigError", "GatedSAE", "JumpReluSAE", "LossOutput",
    "ReluSAE", "SAEConfig", "SAELoadError", "SparseAutoencoder", "TopKSAE", "create", "load_sae",
]
