"""Evaluation: metrics from activations (metrics.py), the SAE spliced into the model
(splice.py), and comparisons of two SAEs' dictionaries (compare.py)."""

from __future__ import annotations

from .metrics import evaluate

__all__ = ["evaluate"]
