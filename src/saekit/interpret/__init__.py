"""Interpretation: what each feature responds to and what it does to the output.

collect.py    collect_feature_stats: one streaming pass, every feature at once
examples.py   Examples / ExampleHeap: top-activating and random examples in bounded memory
logits.py     logit_effects: tokens a decoder direction promotes and suppresses
stats.py      FeatureStats: the result, saved as safetensors (no pickle)

stats = collect_feature_stats(sae, loaded, corpus, n_top=16)
stats.save(run / "feature_stats.safetensors")
stats.top.of(123)          # [Example(value, context, position, tokens, acts), ...]
"""

from __future__ import annotations

from .collect import collect_feature_stats
from .examples import Example, ExampleHeap, Examples
from .logits import logit_effects
from .stats import STATS_FILE, FeatureStats, LogitEffects

__all__ = [
    "STATS_FILE",
    "Example",
    "ExampleHeap",
    "Examples",
    "FeatureStats",
    "LogitEffects",
    "collect_feature_stats",
    "logit_effects",
]
