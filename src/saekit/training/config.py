"""The trainer's configuration: every field typed, ranged and documented, with its
schedules as functions of the step alone (so that a resumed run is exact)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from .._runtime.parsing import (
    Betas,
    Device,
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    validate_fields,
)

ADDED_LATER = {"encoder_lr_scale": 1.0, "decoder_lr_scale": 1.0}
"""TrainConfig fields added later, with the value that reproduces what saekit trained
before they existed."""


@dataclass
class TrainConfig:
    steps: PositiveInt = 2000
    """Optimiser steps; each reads one global batch."""
    batch_size: PositiveInt = 4096
    """Tokens per step, summed over all ranks."""
    lr: PositiveFloat | Literal["auto"] = "auto"
    """Peak Adam learning rate; "auto": the SAE's ``recommended_lr()`` — for the TopK family
    1.5e-3·√(4608 / d_sae), the same for JumpReLU and ReLU, two thirds of it for gated (the
    measurements are in sae/base.py's ``SparseAutoencoder.recommended_lr``)."""
    encoder_lr_scale: PositiveFloat | Literal["auto"] = "auto"
    """W_enc's learning rate as a multiple of lr; "auto": the architecture's (its class's
    ``default_encoder_lr_scale``: 0.7 for TopK, 1 for every other). A slower encoder than
    decoder loses fewer latents; for TopK it also buys a lower FVU and KL in long runs, for
    BatchTopK it does not (sae/topk.py has the measurements)."""
    decoder_lr_scale: PositiveFloat = 1.0
    """W_dec's learning rate as a multiple of lr."""
    lr_warmup_fraction: Fraction = 0.02
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay: Literal["linear", "cosine", "none"] = "linear"
    """Shape of the decay to 0 at the last step."""
    lr_decay_start: UnitInterval = 0.8
    """Fraction of the steps after which the learning rate decays (Anthropic decays over the last 20%)."""
    sparsity_warmup_fraction: Fraction = 0.05
    """Fraction of the steps over which the sparsity coefficient rises linearly from 0."""
    adam_betas: Betas = (0.9, 0.99)
    """Adam's (β1, β2), each in [0, 1); on the command line 0.9,0.99. β2 0.99, not
    torch's 0.999: Adam's denominator then remembers about 100 steps instead of 1,000, a
    third or more of a typical run here, and every architecture measured ends better.
    SmolLM2-135M layers.15.resid_post (the demo's store), k / target L0 32, 4,608 latents,
    batches of 4,096, the trainer's other defaults, seed 0, held-out FVU and spliced KL per
    token, β2 0.999 → 0.99 (benchmarks/quality_matched_tokens.py ``--only
    '^(topk|batchtopk|jumprelu)/saekit' --setting defaults --steps S --seeds 0
    --splice-tokens 4096 --saekit adam_betas=0.9,0.999`` and ``=0.9,0.99``):

        steps  arch       FVU              KL
        300    topk       0.0728 → 0.0719  0.219 → 0.217
        300    batchtopk  0.0863 → 0.0838  0.270 → 0.250
        300    jumprelu   0.0899 → 0.0880  0.279 → 0.275
        2000   topk       0.0660 → 0.0609  0.177 → 0.164
        2000   batchtopk  0.0626 → 0.0558  0.160 → 0.136

    On the toys (benchmarks/toy_recovery.py, seed 0, fraction of the true directions
    found) BatchTopK finds 0.953 of "superposition" against 0.919 (seed 1: 0.958),
    Matryoshka 0.932 against 0.911, JumpReLU 0.938 against 0.935, gated 0.953 against
    0.948; on "easy" BatchTopK 0.969 against 0.938, Matryoshka 0.906 against 0.883,
    JumpReLU 0.992 against 0.961. β2 0.98 and 0.95 were no better there (BatchTopK 0.943,
    0.945; Matryoshka 0.943, 0.938; JumpReLU 0.922, 0.938), nor was β1 0."""
    grad_clip: PositiveFloat | Literal["auto"] | None = "auto"
    """Clip the global gradient norm to this value; none turns clipping off; "auto": the
    architecture's (its class's ``default_grad_clip``: off for the TopK family, 1.0 for the
    penalised ones; sae/topk.py says why)."""
    seed: NonNegativeInt = 0
    """Seeds the SAE's initial weights (saekit train, run and sweep build the SAE with it)
    and the order in which the data is read."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """"bfloat16" runs forward and backward under bf16 autocast (master weights stay float32);
    "auto" chooses bf16 on CUDA and on CPUs with native bf16 matmuls (AVX-512 BF16 or AMX),
    float32 elsewhere: oneDNN emulates bf16 on plain AVX-512, about 5× slower than float32
    (_runtime/precision.py)."""
    device: Device | None = None
    """"cpu", "cuda", "cuda:1", ...; default: cuda if available (the local rank's GPU under torchrun)."""
    normalization_tokens: PositiveInt = 65_536
    """Tokens sampled before training to estimate the activation scale and to initialise b_dec."""
    l0_controller_gain: PositiveFloat | None = None
    """target_l0: the gain g of the controller's slow loop, which multiplies the coefficient by
    exp(g · (e + D / 0.2)) every step (training/controller.py); default: a gain that scales
    with the run's length (``controller_gain``)."""
    log_every: PositiveInt = 50
    """Steps between log lines (and progress-bar updates)."""
    checkpoint_every: PositiveInt | None = None
    """Steps between checkpoints when ``out`` is given (default: every 10% of the run)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""

    def __post_init__(self) -> None:
        validate_fields(self)

    # ---- what a run's result depends on --------------------------------------------------
    def identity(self) -> dict:
        """The fields that change what training produces (not where, how often it logs, or
        on which device), for comparing a folder's run with a rerun's."""
        skip = {"progress", "log_every", "checkpoint_every", "device"}
        # Fields added later are left out at the value that trains as saekit did before
        # them, so that a folder written then is still recognised as the same run.
        skip |= {name for name, before in ADDED_LATER.items() if getattr(self, name) == before}
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in vars(self).items()
            if name not in skip
        }

    def for_sae(self, sae) -> TrainConfig:
        """This config with its "auto" fields set from the SAE's recommendations (lr:
        ``sae.recommended_lr()``, grad_clip and encoder_lr_scale: its class's
        ``default_grad_clip`` and ``default_encoder_lr_scale``), so that a run records, and
        compares, the values it trained with."""
        recommended = {
            "lr": sae.recommended_lr(),
            "grad_clip": sae.default_grad_clip,
            "encoder_lr_scale": sae.default_encoder_lr_scale,
        }
        return replace(self, **{name: value for name, value in recommended.items() if getattr(self, name) == "auto"})

    # ---- schedules (functions of the step alone, so resume is exact) ------------------------
    def lr_at(self, step: int) -> float:
        warmup = int(self.lr_warmup_fraction * self.steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        decay_start = int(self.lr_decay_start * self.steps)
        if self.lr_decay == "none" or step < decay_start or decay_start >= self.steps:
            return self.lr
        progress = (step - decay_start) / (self.steps - decay_start)
        if self.lr_decay == "linear":
            return self.lr * (1 - progress)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def controller_gain(self) -> float:
        """The gain of the target-L0 controller's slow loop (λ): the given one, else 5 / steps
        within [0.002, 0.05]. λ acts through the optimiser, with its momentum's delay, so a
        faster λ overshoots (measured: at 10 / steps a 150-step JumpReLU run swung 20% above
        its target when λ had halved); the fast loop holds the L0 meanwhile."""
        if self.l0_controller_gain is not None:
            return self.l0_controller_gain
        return min(0.05, max(0.002, 5.0 / self.steps))

    def sparsity_scale_at(self, step: int) -> float:
        warmup = int(self.sparsity_warmup_fraction * self.steps)
        return 1.0 if step >= warmup else (step + 1) / warmup
