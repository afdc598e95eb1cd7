"""How well an architecture recovers a known dictionary: train it on one of the named toy
settings of data/synthetic.py (TOY_SETTINGS) and measure it against the truth. Tests and
``benchmarks/toy_recovery.py`` both call this, so their numbers are the same numbers."""

from __future__ import annotations

import time

from ..data.synthetic import TOY_SETTINGS, absorption, recovery
from ..sae.registry import create, uses_k
from ..training.trainer import train
from .metrics import evaluate

TOY_OPTIONS: dict[str, dict] = {"matryoshka_batchtopk": {"group_fractions": [0.625, 0.375]}}
"""Architecture options the toy settings use where the default is made for real models.
Matryoshka's default groups (1, 2, 4, 8 fifteenths) give a first prefix of d_sae / 15
latents, which on a dictionary of 2× the true features must reconstruct x with a tenth
of them and learns mixtures of them instead. The toys use a first group of 5/8 of d_sae,
1.25× the true features: a first prefix that can hold every true feature with room to
spare. With two halves (a first prefix exactly as wide as the truth, with no latent to
spare for a merged pair to split into) it found 0.906 of the "easy" directions against
0.961 at 5/8 and 0.953 at 3/4; 0.932 of "superposition" at halves and at 5/8, 0.938 at
3/4; 0.984 of "correlated" at halves, 0.992 at 5/8 (seed 0, Adam β2 0.99; halves by
``benchmarks/toy_recovery.py --archs matryoshka_batchtopk``, the others with the fractions
passed as options to ``toy_recovery``)."""

SETTING_OPTIONS: dict[tuple[str, str], dict] = {("hierarchy", "matryoshka_batchtopk"): {"group_sizes": [32, 736]}}
"""Per setting, in place of TOY_OPTIONS. On "hierarchy" (24 parents) Matryoshka's first
group is 32 latents: a prefix about as wide as the parents, which must reconstruct x on its
own and so keeps each parent whole. With two halves the first prefix (384 latents) holds
every true feature, nothing pushes against absorption, and Matryoshka absorbs as BatchTopK
does (0.213 against 0.214, seeds 0-2). Measured, seeds 0, 1, 2, from a random start (since
b79435a): first group 32: 0.184, 0.136, 0.125 against BatchTopK's 0.312, 0.267, 0.282, with
the parents' best cosines 0.818, 0.863, 0.855 (BatchTopK 0.834, 0.849, 0.894). Measured
before b79435a, when every SAE started at the true directions (BatchTopK 0.141, 0.236,
0.265): first group 32: 0.096, 0.088, 0.139; 64: 0.148, 0.162, 0.211; 128: 0.198, 0.333,
0.327; groups 48, 96, 624: 0.141, 0.174, 0.178; those widths were not measured again. The
parents' latents take in part of their children's mean direction, the feature composition
Matryoshka is known for."""


def toy_options(setting_name: str, arch: str) -> dict:
    """The SAE options ``arch`` trains with on the toy setting (SETTING_OPTIONS, else TOY_OPTIONS)."""
    return SETTING_OPTIONS.get((setting_name, arch), TOY_OPTIONS.get(arch, {}))


def toy_recovery(
    setting_name: str, arch: str, seed: int = 0, options: dict | None = None, lr: float | str | None = None
) -> dict:
    """Train ``arch`` on seed ``seed`` of a toy setting; return the fraction of true
    directions some decoder row matches at cosine > 0.9, the MMCS, held-out L0, FVU, dead
    fraction and γ, and on hierarchical data the absorption and the parents' best cosine.
    ``options``: SAE config fields, in place of ``toy_options(setting_name, arch)``; ``lr``:
    the learning rate, in place of the setting's (a float, or "auto")."""
    setting = TOY_SETTINGS[setting_name]
    dictionary = setting.dictionary(seed)
    train_x = dictionary.sample(setting.tokens, seed=seed + 1)
    heldout = dictionary.sample(20_000, seed=seed + 2)
    sparsity = {"k": setting.sparsity} if uses_k(arch) else {"target_l0": setting.sparsity}
    options = toy_options(setting_name, arch) if options is None else options
    sae = create(arch, d_in=setting.n, d_sae=setting.d_sae, seed=seed, **sparsity, **options)
    started = time.perf_counter()
    train(
        sae,
        train_x,
        steps=setting.steps,
        batch_size=setting.batch_size,
        lr=setting.lr if lr is None else lr,
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
