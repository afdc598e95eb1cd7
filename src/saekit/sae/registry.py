"""The one place that lists saekit's architectures: name → class. Each class declares
what it is (``summary``, ``coefficient_name``, ``threshold``, ``options``: see
SparseAutoencoder); the CLI, the sweep, config validation and persistence read it here.
"""

from __future__ import annotations

import difflib

import torch

from .base import SparseAutoencoder
from .batchtopk import BatchTopKSAE
from .config import ConfigError, SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
from .matryoshka import MatryoshkaBatchTopKSAE
from .relu import ReluSAE
from .topk import TopKSAE

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls for cls in (ReluSAE, GatedSAE, JumpReluSAE, TopKSAE, BatchTopKSAE, MatryoshkaBatchTopKSAE)
}
ARCHITECTURES: tuple[str, ...] = tuple(SAE_CLASSES)
"""Every architecture's name, in the order tables and sweeps show them."""


def architecture(name: str) -> type[SparseAutoencoder]:
    """The class of architecture ``name``; ConfigError naming the choices otherwise."""
    if name in SAE_CLASSES:
        return SAE_CLASSES[name]
    close = difflib.get_close_matches(str(name), ARCHITECTURES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"arch={name!r} is not an architecture saekit knows{hint}; choose one of {', '.join(ARCHITECTURES)}.",
        field="arch",
        value=name,
        requirement="one of " + ", ".join(ARCHITECTURES),
    )


def sparsity_field(name: str) -> str:
    """The config field that sets an architecture's sparsity directly: "k" or its coefficient."""
    return architecture(name).coefficient_name or "k"


def uses_k(name: str) -> bool:
    """Whether sparsity is set by k (TopK-style) rather than by a penalty or target L0."""
    return architecture(name).coefficient_name is None


def check(cfg: SAEConfig) -> None:
    """Raise ConfigError unless ``cfg`` is a valid config of its architecture."""
    architecture(cfg.arch).check_config(cfg)


def config_identity(config: dict) -> dict:
    """An SAE config (a dict, perhaps written by an earlier saekit) as today's SAEConfig
    holds it, less what its result does not depend on: where it was read from (provenance,
    hook, model) and the option fields its architecture does not use (check_config holds
    them at their defaults). A run's identity records this, so that a new option, or a new
    default of an option another architecture uses, does not orphan an unfinished run."""
    from .base import OPTION_FIELDS

    cfg = SAEConfig.from_dict(dict(config), source="a saved run identity").to_dict()
    used = architecture(cfg["arch"]).options
    return {
        k: v
        for k, v in cfg.items()
        if k not in ("provenance", "hook", "model") and (k not in OPTION_FIELDS or k in used)
    }


def create(arch: str, *, d_in: int, d_sae: int, seed: int = 0, **options) -> SparseAutoencoder:
    """Make an untrained SAE, e.g. ``create("topk", d_in=576, d_sae=9216, k=32)``.

    ``options`` are fields of :class:`SAEConfig` (l1_coefficient, l0_coefficient, target_l0,
    k, decoder_norm, reconstruction_loss, normalize_activations, ...). ``seed`` sets the
    initial weights."""
    cls = architecture(arch)
    cfg = SAEConfig.from_dict({"arch": arch, "d_in": d_in, "d_sae": d_sae, **options}, source="SAE options")
    generator = torch.Generator().manual_seed(seed)
    return cls(cfg, generator=generator)
