"""The sparse autoencoders: one small module per architecture, the registry that maps a
name to its class, and the SAE folder format."""

from __future__ import annotations

from .base import LossOutput, SparseAutoencoder
from .batchtopk import BatchTopKSAE
from .config import ConfigError, SAEConfig
from .files import SAELoadError
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
from .persistence import load_sae
from .registry import ARCHITECTURES, SAE_CLASSES, architecture, create
from .relu import ReluSAE
from .topk import TopKSAE

__all__ = [
    "ARCHITECTURES",
    "SAE_CLASSES",
    "BatchTopKSAE",
    "ConfigError",
    "GatedSAE",
    "JumpReluSAE",
    "LossOutput",
    "ReluSAE",
    "SAEConfig",
    "SAELoadError",
    "SparseAutoencoder",
    "TopKSAE",
    "architecture",
    "create",
    "load_sae",
]
