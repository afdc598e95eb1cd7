"""The configuration of one sparse autoencoder: what is stored in ``cfg.json``.

One dataclass for every architecture; each architecture declares which of the
sparsity fields it uses, and validation rejects the ones it does not, so that a
misspelt or misplaced option is an error instead of a silently ignored value.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

ARCHITECTURES = ("relu", "gated", "jumprelu", "topk", "batchtopk")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


@dataclass
class SAEConfig:
    arch: str
    """Architecture: one of relu, gated, jumprelu, topk, batchtopk."""
    d_in: int
    """Width of the activations the SAE reads (the model's d_model at the hook point)."""
    d_sae: int
    """Number of features (dictionary size M)."""

    l1_coefficient: float | None = None
    """relu, gated: weight λ of the L1 penalty. Leave unset when target_l0 is given."""
    l0_coefficient: float | None = None
    """jumprelu: weight λ of the L0 penalty. Leave unset when target_l0 is given."""
    target_l0: float | None = None
    """relu, gated, jumprelu: the trainer adapts the sparsity coefficient until the
    measured L0 (mean active features per token) settles here."""
    k: int | None = None
    """topk: active features per token; batchtopk: mean active features per token (k·B per batch)."""

    decoder_norm: Literal["unit", "weighted"] = "unit"
    """relu: "unit" holds each decoder row at unit norm (gradient projected, row renormalised
    after every step); "weighted" leaves the decoder free and weights each feature's L1 by
    its decoder norm, λ Σ_i |f_i| ‖d_i‖. gated: the same two modes (its penalty is always
    weighted by ‖d_i‖, which is 1 under "unit"). jumprelu/topk/batchtopk always use "unit"."""
    reconstruction_loss: Literal["sum", "mean"] = "sum"
    """How the squared error is reduced over the d_in dimensions of one token: "sum" gives
    ‖x̂ − x‖² (the Anthropic / SAELens convention), "mean" gives ‖x̂ − x‖²/d_in. Both are then
    averaged over tokens. Changes the units of the sparsity coefficient."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: width ε of the rectangle kernel of the straight-through estimator. Gemma
    Scope's 0.001 is for activations scaled to unit mean squared norm; saekit scales them to
    E‖x‖ = √d_in, where pre-activations are O(1) and ε = 0.001 leaves the thresholds almost
    no gradient (measured: the target-L0 controller then misses by 25%)."""
    jumprelu_init_threshold: float = 0.01
    """jumprelu: initial value of every threshold θ_i."""
    aux_k: int | None = None
    """topk, batchtopk: number of dead latents used by the AuxK loss (default d_in // 2)."""
    aux_coefficient: float = 1 / 32
    """topk, batchtopk: weight of the AuxK loss (Gao et al. 2024)."""
    dead_tokens: int = 1_000_000
    """A feature that has not fired for this many training tokens counts as dead (AuxK, logs)."""
    batchtopk_threshold_momentum: float = 0.99
    """batchtopk: momentum of the running inference threshold."""
    feature_scale: bool = False
    """Whether the SAE carries the per-feature scale vector s (f_s = s ⊙ f) that fixes
    feature suppression; fitted by saekit.fit_scale after training."""

    normalize_activations: Literal["expected_norm", "none"] = "expected_norm"
    """"expected_norm": activations are scaled during training by c so that E‖c·x‖ = √d_in;
    c is folded into the weights when training ends, so the saved SAE reads raw activations.
    "none": activations are used as they are."""
    activation_scale: float = 1.0
    """The factor c that was folded into the weights (1.0 when none was)."""

    hook: str | None = None
    """Hook point the SAE was trained on, e.g. "layers.15.resid_post"."""
    model: str | None = None
    """Model the activations came from."""
    dtype: str = "float32"
    """dtype of the stored weights."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Training provenance: steps, tokens, seed, data source, saekit version."""

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------
    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"arch={self.arch!r} is not an architecture saekit knows; choose one of {', '.join(ARCHITECTURES)}."
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        self._validate_sparsity()
        if self.decoder_norm not in ("unit", "weighted"):
            raise ConfigError(f"decoder_norm must be 'unit' or 'weighted', got {self.decoder_norm!r}.")
        if self.reconstruction_loss not in ("sum", "mean"):
            raise ConfigError(f"reconstruction_loss must be 'sum' or 'mean', got {self.reconstruction_loss!r}.")
        if self.normalize_activations not in ("expected_norm", "none"):
            raise ConfigError(
                f"normalize_activations must be 'expected_norm' or 'none', got {self.normalize_activations!r}."
            )
        for name in ("jumprelu_bandwidth", "activation_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}.")
        if self.jumprelu_init_threshold < 0:
            raise ConfigError(f"jumprelu_init_threshold must be >= 0, got {self.jumprelu_init_threshold!r}.")
        if self.aux_coefficient < 0:
            raise ConfigError(f"aux_coefficient must be >= 0, got {self.aux_coefficient!r}.")
        if not 0 <= self.batchtopk_threshold_momentum < 1:
            raise ConfigError("batchtopk_threshold_momentum must be in [0, 1).")
        if self.dead_tokens < 1:
            raise ConfigError(f"dead_tokens must be a positive integer, got {self.dead_tokens!r}.")

    def _validate_sparsity(self) -> None:
        penalty = {"relu": "l1_coefficient", "gated": "l1_coefficient", "jumprelu": "l0_coefficient"}.get(self.arch)
        unused = {"l1_coefficient", "l0_coefficient", "target_l0", "k"}
        if penalty is not None:
            unused -= {penalty, "target_l0"}
            coefficient = getattr(self, penalty)
            if coefficient is None and self.target_l0 is None:
                raise ConfigError(
                    f"{self.arch} needs a sparsity level: give {penalty}=<λ ≥ 0> or target_l0=<features per token>."
                )
            if coefficient is not None and (not math.isfinite(coefficient) or coefficient < 0):
                raise ConfigError(f"{penalty} must be a finite number >= 0, got {coefficient!r}.")
            if self.target_l0 is not None and not (0 < self.target_l0 < self.d_sae):
                raise ConfigError(f"target_l0 must lie in (0, d_sae={self.d_sae}), got {self.target_l0!r}.")
        else:
            unused -= {"k"}
            if self.k is None:
                raise ConfigError(f"{self.arch} needs k, the number of active features per token.")
            if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ConfigError(f"k must be an integer in [1, d_sae={self.d_sae}], got {self.k!r}.")
            if self.aux_k is not None and not 1 <= self.aux_k <= self.d_sae:
                raise ConfigError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k!r}.")
        for name in sorted(unused):
            if getattr(self, name) is not None:
                raise ConfigError(f"{name} does not apply to arch={self.arch!r}; remove it.")

    # ---- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "cfg.json") -> "SAEConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        missing = [name for name in ("arch", "d_in", "d_sae") if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {missing}.")
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
