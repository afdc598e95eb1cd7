"""Training: the trainer and its configuration, checkpoints, several SAEs in one pass,
the feature-scale fit, and metric loggers."""

from __future__ import annotations

from .config import TrainConfig
from .fit_scale import fit_scale
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit_scale", "train"]
