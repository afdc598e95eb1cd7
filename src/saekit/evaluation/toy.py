"""How well an architecture recovers a known dictionary: train it on one of the named toy
settings of data/synthetic.py (TOY_SETTINGS) and measure it against the truth. Tests and
``benchmarks/toy_recovery.py`` both call this, so their numbers are the same numbers."""

from __future__ import annotations

import time

from ..data.synthetic import TOY_SETTINGS, absorption, recovery
from ..sae.registry import create, uses_k
from ..training.trainer import train
from .metrics import evaluate

TOY_OPTIONS: dict[str, dict] = {"matryoshka_batchtopk": {"group_fractions": [0.5, 0.5]}}
"""Architecture options the toy settings use where the default is made for real models.
Matryoshka's default groups (1, 2, 4, 8 fifteenths) give a first prefix of d_sae / 15
latents, which on a dictionary of 2× the true features must reconstruct x with a tenth
of them and learns mixtures of them instead: 88% recovered on "superposition" against
96% with two halves (quarter / three quarters: 84%, thirds: 90%; seed 0)."""


def toy_recovery(setting_name: str, arch: str, seed: int = 0, options: dict | None = None) -> dict:
    """Train ``arch`` on seed ``seed`` of a toy setting; return the fraction of true
    directions some decoder row matches at cosine > 0.9, the MMCS, held-out L0, FVU, dead
    fraction and γ, and on hierarchical data the absorption and the parents' best cosine.
    ``options``: SAE config fields, in place of TOY_OPTIONS for the architecture."""
    setting = TOY_SETTINGS[setting_name]
    dictionary = setting.dictionary(seed)
    train_x = dictionary.sample(setting.tokens, seed=seed + 1)
    heldout = dictionary.sample(20_000, seed=seed + 2)
    sparsity = {"k": setting.sparsity} if uses_k(arch) else {"target_l0": setting.sparsity}
    options = TOY_OPTIONS.get(arch, {}) if options is None else options
    sae = create(arch, d_in=setting.n, d_sae=setting.d_sae, seed=seed, **sparsity, **options)
    started = time.perf_counter()
    train(
        sae,
        train_x,
        steps=setting.steps,
        batch_size=setting.batch_size,
        lr=setting.lr,
        precision="float32",
        progress=False,
    )
    seconds = time.perf_counter() - started
    metrics = evaluate(sae, heldout)
    row = {
        "setting": setting_name,
        "arch": arch,
        "seed": seed,
        **recovery(sae.W_dec, dictionary.directions),
        "l0": metrics["l0"],
        "target": setting.sparsity,
        "fvu": metrics["fvu"],
        "dead": metrics["dead_fraction"],
        "gamma": metrics["relative_reconstruction_bias"],
        "seconds": seconds,
    }
    if dictionary.n_parents:
        row.update(absorption(sae, dictionary))
    return row
