"""Interpretation: what each feature responds to and what it does to the output.

collect.py    collect_feature_stats: one streaming pass, every feature at once;
              collect_firings: every firing of a few features over a store's rows
examples.py   Examples / ExampleHeap: top-activating and random examples in bounded memory
logits.py     logit_effects: tokens a decoder direction promotes and suppresses
stats.py      FeatureStats: the result, saved as safetensors (no pickle)
autointerp.py explain_features: explanations written by an LLM, scored by detection and
              fuzzing (sampling.py examples, explain.py prompt, scoring.py, llm.py clients)
steer.py      edit: steer, clamp or ablate features inside the model (a context manager);
              generate, ablation_effects; steering_table.py: the dashboard's steered continuations
contrast.py   rank: features one corpus brings out more than another (log-odds with a bound);
              contrast_pass.py: contrast_corpora, the corpus pass (encode_pass.py: firings
              per context); labels.py: a feature's top tokens

stats = collect_feature_stats(sae, loaded, corpus, n_top=16)
stats.save(run / "feature_stats.safetensors")
stats.top.of(123)          # [Example(value, context, position, tokens, acts), ...]
with edit(loaded, sae, steer={123: 40.0}):   # or clamp={123: 5.0}, ablate=[123]
    logits = loaded.model(input_ids=ids).logits
"""

from __future__ import annotations

from .autointerp import ExplainConfig, explain_features
from .collect import collect_feature_stats
from .examples import Example, ExampleHeap, Examples
from .logits import logit_effects
from .stats import STATS_FILE, FeatureStats, LogitEffects
from .steer import edit

__all__ = [
    "STATS_FILE",
    "Example",
    "ExampleHeap",
    "Examples",
    "ExplainConfig",
    "FeatureStats",
    "LogitEffects",
    "collect_feature_stats",
    "explain_features",
    "edit",
    "logit_effects",
]
