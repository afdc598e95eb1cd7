"""saekit: sparse dictionary learning on language-model activations.

import saekit
sae = saekit.create("jumprelu", d_in=576, d_sae=9216, target_l0=40)
result = saekit.train(sae, activations, steps=2000, batch_size=4096)
saekit.fit_scale(sae, activations)       # the feature-suppression fix
metrics = saekit.evaluate(sae, activations)
sae.save("out/sae"); sae = saekit.load("out/sae")
"""

from __future__ import annotations

from .evaluation.metrics import evaluate
from .formats import load
from .sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, create
from .sae.convert import convert
from .training.fit_scale import fit_scale
from .training.trainer import train

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "open_store":  # the data path imports transformers-adjacent code; load it on first use
        from .data.store import open_store

        return open_store
    raise AttributeError(f"module 'saekit' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "SAEConfig",
    "SparseAutoencoder",
    "convert",
    "create",
    "evaluate",
    "fit_scale",
    "load",
    "open_store",
    "train",
]
