"""Steered continuations of a few fixed prompts for the dashboard (RUN/features/steering.json).

For each chosen feature F, each prompt and each strength multiple m, the greedy
continuation with x ← x + m·u_F·d_F at the SAE's hook point, u_F = ‖max_F·w_F‖ the norm
of what F writes at its largest activation on the run's corpus (interpret/steer.py): m = 1
steers as hard as the feature ever acts, whatever its scale. One batch generates every
feature at once for a prompt and a strength (the prompt is the same length in every row).

The file's format is fixed (shared with the dashboard):

    {"hook": str, "prompts": [str], "strengths": [float], "max_new_tokens": int,
     "unsteered": [str per prompt],
     "features": {"<id>": [{"prompt": int, "strength": float, "text": str}, ...]}}

with "strengths" the multiples m, and "text" the continuation only.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.model import LoadedModel
from ..sae.base import SparseAutoencoder
from .stats import FeatureStats
from .steer import feature_direction, generate, prompt_ids, steered_continuations, strength_unit

DENSE_FREQUENCY = 0.1
"""Features firing on more than this share of tokens are left out: steering one moves
every token's activation and says little about the feature."""


def top_features(stats: FeatureStats, n: int, *, dense: float = DENSE_FREQUENCY) -> list[int]:
    """The ``n`` live features that fire most often, dense ones left out (ties: lower id)."""
    frequency = stats.frequency
    eligible = (stats.count > 0) & (frequency <= dense)
    key = torch.where(eligible, stats.count.double(), torch.full_like(frequency, -1.0))
    order = torch.sort(key, descending=True, stable=True).indices
    return [int(f) for f in order[: int(eligible.sum())][:n]]


@torch.no_grad()
def steering_table(
    loaded: LoadedModel,
    sae: SparseAutoencoder,
    stats: FeatureStats,
    *,
    features: list[int],
    prompts: list[str],
    strengths: list[float],
    max_new_tokens: int,
) -> dict[str, Any]:
    """The content of steering.json (module docstring) for ``features``."""
    hook = sae.cfg.hook_out or sae.cfg.hook
    directions = torch.stack([feature_direction(sae, f) for f in features]) if features else None
    units = torch.tensor([strength_unit(sae, stats.max_activation, f) for f in features], device=sae.W_dec.device)
    table: dict[str, list[dict[str, Any]]] = {str(f): [] for f in features}
    unsteered = []
    for p, prompt in enumerate(prompts):
        unsteered.append(generate(loaded, prompt_ids(loaded, prompt), max_new_tokens)[0])
        for m in strengths:
            if directions is None:
                continue
            texts = steered_continuations(loaded, sae, prompt, m * units[:, None] * directions, max_new_tokens)
            for f, text in zip(features, texts):
                table[str(f)].append({"prompt": p, "strength": float(m), "text": text})
    return {
        "hook": str(hook),
        "prompts": list(prompts),
        "strengths": [float(m) for m in strengths],
        "max_new_tokens": int(max_new_tokens),
        "unsteered": unsteered,
        "features": table,
    }


def matches(saved: dict[str, Any], *, hook: str, features: list[int], prompts, strengths, max_new_tokens) -> bool:
    """Whether a steering.json was made with these settings (it records them all)."""
    return (
        saved.get("hook") == hook
        and saved.get("prompts") == list(prompts)
        and saved.get("strengths") == [float(m) for m in strengths]
        and saved.get("max_new_tokens") == max_new_tokens
        and list(saved.get("features", {})) == [str(f) for f in features]
    )
