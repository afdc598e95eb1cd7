"""The configuration of one sparse autoencoder: what is stored in ``cfg.json``.

One dataclass for every architecture. Each field is parsed to its declared type and
range when the config is made (from Python, a file or a flag); each architecture
declares which of the architecture-specific fields it uses (sae/registry.py), and
``SparseAutoencoder.check_config`` rejects the ones it does not, so that a misspelt or
misplaced option is an error instead of a silently ignored value.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .._runtime.errors import ConfigValueError
from .._runtime.parsing import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    from_dict,
    validate_fields,
)
from .hooks import layer_of, transformer_lens_name

FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
"""The dtypes an SAE's weights may be stored in."""


class ConfigError(ConfigValueError):
    """An SAE configuration value is wrong; the message names the field and what is allowed."""


@dataclass
class SAEConfig:
    arch: str
    """Architecture: one of saekit.ARCHITECTURES (relu, gated, jumprelu, topk, batchtopk)."""
    d_in: PositiveInt
    """Width of the activations the SAE reads (the model's d_model at the hook point)."""
    d_sae: PositiveInt
    """Number of features (dictionary size M)."""
    d_out: PositiveInt | None = None
    """Width of what the SAE predicts: a transcoder's target (default d_in); an SAE
    reconstructs its input, so leave it unset."""
    transcoder: bool | Literal["skip"] = False
    """true: a transcoder, which reads one hook point and predicts another (an MLP's output
    from its input, say); "skip": a skip transcoder, whose prediction adds a linear term
    x W_skipᵀ. Any architecture can be a transcoder."""
    apply_b_dec_to_input: bool = True
    """Whether the encoder reads x − b_dec (the pre-encoder bias of Bricken et al.) or x.
    Transcoders never subtract b_dec (it lives in the target's space); SAEs read from other
    libraries may not."""
    input_normalization: Literal["none", "constant_norm_rescale", "layer_norm"] = "none"
    """A normalisation of each input at run time, undone on the output: SAELens's
    constant_norm_rescale (x·√d_in/‖x‖) and layer_norm. Only SAEs read from SAELens use it."""

    l1_coefficient: NonNegativeFloat | None = None
    """relu, gated: weight λ of the L1 penalty. Leave unset when target_l0 is given."""
    l0_coefficient: NonNegativeFloat | None = None
    """jumprelu: weight λ of the L0 penalty. Leave unset when target_l0 is given."""
    target_l0: PositiveFloat | None = None
    """relu, gated, jumprelu: the trainer adapts the sparsity coefficient until the
    measured L0 (mean active features per token) settles here."""
    k: PositiveInt | None = None
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
    jumprelu_bandwidth: PositiveFloat = 0.05
    """jumprelu: width ε of the rectangle kernel of the straight-through estimator. Gemma
    Scope's 0.001 is for activations scaled to unit mean squared norm; saekit scales them to
    E‖x‖ = √d_in, where pre-activations are O(1) and ε = 0.001 leaves the thresholds almost
    no gradient (measured: the target-L0 controller then misses by 25%)."""
    jumprelu_init_threshold: NonNegativeFloat = 0.01
    """jumprelu: initial value of every threshold θ_i."""
    aux_k: PositiveInt | None = None
    """topk, batchtopk, matryoshka_batchtopk: number of dead latents the AuxK loss decodes
    per token (default k // 2, at least 1; Gao et al.'s d_in // 2 sums hundreds of barely
    aligned latents, which pulls each less towards what the live ones miss: TopKSAE's table)."""
    aux_coefficient: NonNegativeFloat = 1.0
    """topk, batchtopk, matryoshka_batchtopk: weight of the AuxK loss (Gao et al. 2024 use
    1/32 with a 10M-token window; with the short window of aux_dead_batches, 1 revives
    more: TopKSAE's table)."""
    dead_tokens: PositiveInt = 1_000_000
    """A feature that has not fired for this many training tokens counts as dead (the
    training log's dead_fraction; AuxK's window is the shorter aux_dead_batches)."""
    aux_dead_batches: PositiveInt = 10
    """topk, batchtopk, matryoshka_batchtopk: a latent silent for this many training batches
    (or dead_tokens tokens, if fewer) joins the AuxK loss. Counted in batches because what
    matters is how many optimiser steps a latent has gone without gradient: by the time a
    1M-token window opens, the latents that died early have been left behind (TopKSAE's
    table)."""
    batchtopk_threshold_momentum: float = 0.99
    """batchtopk, matryoshka_batchtopk: momentum of the running inference threshold, in [0, 1)
    (what θ is during training; the last step sets it from the last batch)."""
    group_sizes: list[PositiveInt] | None = None
    """matryoshka_batchtopk: the sizes of the nested groups of latents, adding up to d_sae
    (prefix m is groups 0..m). Default: four groups doubling in size."""
    group_fractions: list[PositiveFloat] | None = None
    """matryoshka_batchtopk: the groups as fractions of d_sae (instead of group_sizes), adding up to 1."""
    group_weights: list[NonNegativeFloat] | None = None
    """matryoshka_batchtopk: the weight of each prefix's reconstruction error (default: 1/G each)."""
    feature_scale: bool = False
    """Whether the SAE carries the per-feature scale vector s (f_s = s ⊙ f) that fixes
    feature suppression; fitted by saekit.fit_scale after training."""

    normalize_activations: Literal["expected_norm", "none"] = "expected_norm"
    """"expected_norm": activations are scaled during training by c so that E‖c·x‖ = √d_in;
    c is folded into the weights when training ends, so the saved SAE reads raw activations.
    "none": activations are used as they are."""
    activation_scale: PositiveFloat = 1.0
    """The factor c that was folded into the weights (1.0 when none was)."""
    target_scale: PositiveFloat = 1.0
    """A transcoder's: the factor its target was scaled by in training, folded into its decoder."""

    hook: str | None = None
    """Hook point the SAE was trained on (a transcoder: the one it reads), e.g. "layers.15.resid_post"."""
    hook_out: str | None = None
    """A transcoder's target hook point, e.g. "layers.9.mlp_out"."""
    model: str | None = None
    """Model the activations came from."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """dtype of the stored weights."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Training provenance: steps, tokens, seed, data source, saekit version."""

    def __post_init__(self) -> None:
        try:
            validate_fields(self)
        except ConfigValueError as error:
            raise ConfigError(str(error), field=error.field, value=error.value, requirement=error.requirement) from None
        if not isinstance(self.arch, str) or not self.arch:
            raise ConfigError(f"arch must be an architecture name, got {self.arch!r}.", field="arch", value=self.arch)
        if self.transcoder:
            self.apply_b_dec_to_input = False
        elif self.d_out is not None and self.d_out != self.d_in:
            raise ConfigError(
                f"d_out={self.d_out} differs from d_in={self.d_in}, which only a transcoder can do; "
                'pass transcoder=True (or "skip"), or leave d_out unset.',
                field="d_out",
                value=self.d_out,
            )
        if not 0 <= self.batchtopk_threshold_momentum < 1:
            raise ConfigError(
                f"batchtopk_threshold_momentum must be in [0, 1), got {self.batchtopk_threshold_momentum!r}.",
                field="batchtopk_threshold_momentum",
                value=self.batchtopk_threshold_momentum,
            )

    # ---- what SAEBench and other SAELens-minded tools read off a config --------------------
    # (settable, because SAEBench writes them back onto the config it is given)
    @property
    def model_name(self) -> str | None:
        return self.__dict__.get("_model_name", self.model)

    @model_name.setter
    def model_name(self, value: str | None) -> None:
        self.__dict__["_model_name"] = value

    @property
    def hook_name(self) -> str | None:
        """The hook point in TransformerLens naming (blocks.15.hook_resid_post)."""
        return self.__dict__.get("_hook_name", transformer_lens_name(self.hook))

    @hook_name.setter
    def hook_name(self, value: str | None) -> None:
        self.__dict__["_hook_name"] = value

    @property
    def hook_layer(self) -> int | None:
        return self.__dict__.get("_hook_layer", layer_of(self.hook))

    @hook_layer.setter
    def hook_layer(self, value: int | None) -> None:
        self.__dict__["_hook_layer"] = value

    def architecture(self) -> str:
        return self.arch

    # ---- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "cfg.json") -> SAEConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        missing = [name for name in ("arch", "d_in", "d_sae") if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {missing}.")
        try:
            return from_dict(cls, data, where=source)
        except ConfigError:
            raise
        except ConfigValueError as error:
            raise ConfigError(str(error), field=error.field, value=error.value) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
