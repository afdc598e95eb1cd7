"""The sparse autoencoders: one small module per architecture, and the registry that maps
a name to its class. (SAE folders on disk are saekit.formats'.)"""

from __future__ import annotations

from .base import LossOutput, SparseAutoencoder
from .batchtopk import BatchTopKSAE
from .config import ConfigError, SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
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
    "SparseAutoencoder",
    "TopKSAE",
    "architecture",
    "create",
]
