"""What the feature pages show beyond FeatureStats, gathered once at report time.

    co-firing features      from a sample of the run's stored activations, encoded by the SAE
    decoder neighbours      from W_dec alone
    logit-weight histogram  from the model's unembedding (needs the loaded model)
    explanation + scores    RUN/features/explanations.jsonl, when there
    steered continuations   RUN/features/steering.json, when there

Each part is optional: what could not be made is said in ``notes`` (shown on the
overview) and the pages render without it; a file that is there but damaged is refused
(annotations.py). Nothing here is written to disk: the results depend on the SAE, the
store and the model together, and are cheap enough to redo (on the demo, d_sae = 4,608,
one CPU core: co-firing ~5 s, decoder neighbours < 1 s, logit histograms ~9 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._runtime.errors import SaekitError
from ..interpret.logit_histogram import LogitHistograms, logit_histograms
from ..interpret.neighbours import CoFiring, DecoderNeighbours, decoder_neighbours, firing_pattern, top_co_firing
from ..sae.base import SparseAutoencoder
from .annotations import EXPLANATIONS_FILE, STEERING_FILE, Explanation, Steering, read_explanations, read_steering

CO_FIRING_TOKENS = 32_768
"""Tokens of the store encoded for co-firing: about 5 s at d_sae = 4,608 on one CPU core
(mostly the encoder); a feature firing once in 1,000 tokens fires ~33 times in it."""
NEIGHBOURS = 8
"""Co-firing and decoder neighbours shown per feature."""
BATCH = 4096


@dataclass
class FeatureExtras:
    """Everything optional a feature page can show; None / empty where not available."""

    co_firing: CoFiring | None = None
    decoder: DecoderNeighbours | None = None
    logit_histograms: LogitHistograms | None = None
    explanations: dict[int, Explanation] = field(default_factory=dict)
    steering: Steering | None = None
    notes: list[str] = field(default_factory=list)
    """What was left out and why, one sentence each."""


def run_folder_of(out_dir: Path) -> Path | None:
    """The run folder a report folder belongs to: RUN for RUN/report, when RUN holds a run."""
    parent = Path(out_dir).resolve().parent
    return parent if (parent / "saekit.json").is_file() and (parent / "features").is_dir() else None


def gather_extras(
    sae: SparseAutoencoder,
    features: range,
    *,
    run: str | Path | None = None,
    loaded: Any = None,
    hook: str | None = None,
    activations: Tensor | None = None,
    k: int = NEIGHBOURS,
    co_firing_tokens: int = CO_FIRING_TOKENS,
    seed: int = 0,
) -> FeatureExtras:
    """The extras of ``features``: co-firing from ``activations`` [T, d_in] (or, without
    them, a random sample of ``co_firing_tokens`` rows of RUN/store), logit histograms
    when ``loaded`` (a LoadedModel) is given, explanations and steering from RUN/features."""
    extras = FeatureExtras()
    extras.decoder = decoder_neighbours(sae.W_dec, k=k, features=features)
    if activations is None and run is not None:
        activations, why = store_sample(Path(run) / "store", sae, co_firing_tokens, seed)
        if why:
            extras.notes.append(why)
    if activations is not None:
        extras.co_firing = top_co_firing(firing_pattern(sae, activations.split(BATCH)), k=k, features=features)
    elif run is None:
        extras.notes.append("Co-firing features need activations (a run folder with a store).")
    hook = hook or sae.cfg.hook
    if loaded is not None and hook:
        extras.logit_histograms = logit_histograms(sae, loaded, hook, features=features)
    elif loaded is not None:
        extras.notes.append(
            "The logit-weight histograms need the SAE's hook point, which neither it nor the statistics name."
        )
    else:
        extras.notes.append("The logit-weight histograms need the model (the report was written without it).")
    if run is not None:
        extras.explanations = read_explanations(Path(run) / "features" / EXPLANATIONS_FILE, sae.d_sae)
        extras.steering = read_steering(Path(run) / "features" / STEERING_FILE, sae.d_sae)
    return extras


def store_sample(path: Path, sae: SparseAutoencoder, n: int, seed: int) -> tuple[Tensor | None, str | None]:
    """(float32 rows [≤ n, d_in] drawn uniformly without replacement from the store at
    ``path``, None) or (None, why not). The checksums are not verified here (training
    verified them; a sample for display reads a few MB of a large store)."""
    from ..data.pairs import is_paired_folder, open_pairs
    from ..data.store import open_store

    if not (path / "manifest.json").is_file() and not is_paired_folder(path):
        return None, "Co-firing features need the run's activation store, which this run does not have."
    try:
        store = open_pairs(path, verify=False).inputs if is_paired_folder(path) else open_store(path, verify=False)
    except SaekitError as error:
        return None, f"Co-firing features were left out: the store is unreadable ({error})."
    if store.d_in != sae.d_in or (sae.cfg.hook and store.hook and store.hook != sae.cfg.hook):
        return None, (
            f"Co-firing features were left out: the store holds {store.hook} (d_in={store.d_in}), "
            f"the SAE reads {sae.cfg.hook} (d_in={sae.d_in})."
        )
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(store.n_tokens, generator=generator)[: max(1, n)].sort().values
    return store.activations[rows].float(), None
