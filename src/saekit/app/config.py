"""The configuration of a run (``saekit run CONFIG``): one dataclass per stage, composed
into :class:`RunConfig`, read from TOML, YAML or JSON and validated before any work
starts. Every field is parsed to its declared type (_runtime/parsing.py); its default
is here and its documentation right below it, which ``saekit run --help`` and
``saekit config --defaults`` print.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from .._runtime.errors import ConfigValueError
from .._runtime.parsing import (
    DeviceOrAuto,
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Range,
    field_docs,
    from_dict,
    validate_fields,
)
from ..sae import registry
from ..sae.config import ConfigError, SAEConfig
from ..training.config import TrainConfig

MAX_CONFIG_BYTES = 1 << 20
"""A run config is a few kilobytes; a larger file is not one."""


@dataclass
class ModelSection:
    name: str = "smollm2"
    """The language model: "smollm2" (SmolLM2-135M-Instruct, embedded), "gemma3-270m"
    (embedded), a .gguf file, a local Hugging Face folder, or a Hub id (needs the network)."""
    hook: str = "layers.15.resid_post"
    """Where in the model to read activations: layers.{L}.resid_pre, resid_post, attn_out,
    mlp_in, mlp_out, or final_norm."""
    hook_out: str | None = None
    """A transcoder's target: the hook point it predicts from ``hook`` (layers.9.mlp_in →
    layers.9.mlp_out, say). With it the run harvests both and trains a transcoder."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """dtype the model runs in; auto: bfloat16 on GPUs and on CPUs with native bf16."""
    device: DeviceOrAuto = "auto"
    """"cpu", "cuda", "cuda:1", or auto (cuda when available)."""

    def __post_init__(self) -> None:
        validate_fields(self)
        from ..data.model import parse_hook

        for name in ("hook", "hook_out"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                parse_hook(value)
            except ValueError as error:
                raise ConfigValueError(f"{name}: {error}", field=name, value=value) from None
        if self.hook_out is not None and str(parse_hook(self.hook_out)) == str(parse_hook(self.hook)):
            raise ConfigValueError(
                "hook_out is hook itself; a transcoder predicts another hook point.",
                field="hook_out",
                value=self.hook_out,
            )


@dataclass
class CorpusSection:
    path: str = "default"
    """Texts: a folder of .txt/.md files, a text file, JSON Lines, Parquet, or a datasets
    folder; "default" is the embedded corpus (Shakespeare's plays)."""
    text_field: str | None = None
    """The field holding the text in JSON Lines / Parquet / datasets input, where it is ambiguous."""
    context_size: Annotated[int, Range(ge=2)] = 128
    """Tokens per context (BOS included)."""
    pack: bool = True
    """Pack documents into contexts back to back (false: one document per context, truncated)."""
    exclude_special_tokens: bool = True
    """Leave BOS/EOS/separators out of the activations used for training and statistics."""
    held_out_fraction: OpenFraction = 0.05
    """Fraction of contexts held out for evaluation (never trained on)."""
    seed: NonNegativeInt = 0
    """Seed of the train / held-out split."""

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.path != "default" and not Path(self.path).expanduser().exists():
            raise ConfigValueError(
                f'path: the corpus {self.path!r} does not exist; give an existing file or folder, or "default".',
                field="path",
                value=self.path,
            )


@dataclass
class HarvestSection:
    tokens: PositiveInt = 400_000
    """Training tokens of activations to harvest into the store."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype of the stored activations (bf16: 2 bytes per value)."""
    batch_contexts: PositiveInt = 8
    """Contexts per forward pass."""
    shard_tokens: PositiveInt = 65_536
    """Rows per store shard."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class SAESection:
    arch: str = "topk"
    """Architecture: relu, gated, jumprelu, topk, batchtopk or matryoshka_batchtopk (saekit.ARCHITECTURES)."""
    expansion: PositiveInt = 8
    """d_sae = expansion × d_in, unless d_sae is given."""
    d_sae: PositiveInt | None = None
    """Number of features; overrides expansion."""
    k: PositiveInt | None = 32
    """topk / batchtopk: active features per token. relu / gated / jumprelu given neither
    target_l0 nor a coefficient train to L0 = k, so one knob sets every architecture's sparsity."""
    target_l0: PositiveFloat | None = None
    """relu / gated / jumprelu: train until this many features are active per token."""
    l1_coefficient: NonNegativeFloat | None = None
    """relu / gated: L1 coefficient (instead of target_l0)."""
    l0_coefficient: NonNegativeFloat | None = None
    """jumprelu: L0 coefficient (instead of target_l0)."""
    fit_scale: bool = False
    """Fit the per-feature scale vector s after training (the feature-suppression fix)."""
    transcoder: bool | Literal["skip"] = False
    """true: a transcoder from model.hook to model.hook_out (or to the target of a paired
    store); "skip": a skip transcoder, with a linear term x W_skipᵀ. model.hook_out alone
    makes a run's SAE a transcoder."""
    load: str | None = None
    """An existing SAE to evaluate and explain instead of training one: a saekit or SAELens
    folder, a sparsify or dictionary_learning checkpoint, a Gemma Scope folder,
    hf://ORG/REPO/PATH or saelens://RELEASE/SAE_ID. Harvest and training are skipped."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further SAE options (fields of saekit.SAEConfig: decoder_norm, reconstruction_loss,
    normalize_activations, aux_k, jumprelu_bandwidth, ...); on the command line
    key=value,key=value."""

    def __post_init__(self) -> None:
        validate_fields(self)
        registry.architecture(self.arch)  # a known name, or an error listing them
        known = {f.name for f in dataclasses.fields(SAEConfig)} - {"arch", "d_in", "d_sae"}
        reserved = {"k", "target_l0", "l1_coefficient", "l0_coefficient", "transcoder"}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ConfigValueError(
                f"options: unknown SAE option(s) {unknown}; the options are {sorted(known - reserved)}.",
                field="options",
                value=self.options,
            )
        if set(self.options) & reserved:
            raise ConfigValueError(
                f"options: set {sorted(set(self.options) & reserved)} as fields of their own "
                "([sae] k = ..., --sae.k ...), not in options.",
                field="options",
                value=self.options,
            )

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion * d_in

    def sae_options(self) -> dict[str, Any]:
        """Keyword arguments of saekit.create for this section. Fields that do not apply
        to the architecture are left out, so that one config can be swept across
        architectures; a penalised architecture given neither a coefficient nor target_l0
        trains to L0 = k."""
        options: dict[str, Any] = dict(self.options)
        if self.transcoder:
            options["transcoder"] = self.transcoder
        if registry.uses_k(self.arch):
            options["k"] = self.k
            return options
        coefficient = registry.sparsity_field(self.arch)
        value = getattr(self, coefficient)
        if value is not None:
            options[coefficient] = value
        if self.target_l0 is not None:
            options["target_l0"] = self.target_l0
        elif value is None:
            options["target_l0"] = float(self.k or 32)  # one sparsity knob for every architecture
        return options

    def check(self, d_in: int, *, d_out: int | None = None) -> SAEConfig:
        """The SAE's config for a model of width ``d_in``, validated before any work starts."""
        extra = {"d_out": d_out} if d_out is not None and d_out != d_in else {}
        cfg = SAEConfig.from_dict(
            {"arch": self.arch, "d_in": d_in, "d_sae": self.width(d_in), **self.sae_options(), **extra}, source="sae"
        )
        registry.check(cfg)
        return cfg


@dataclass
class EvaluateSection:
    tokens: PositiveInt = 16_384
    """Held-out tokens for evaluation (cross-entropy with the SAE spliced in, activation metrics)."""
    batch_contexts: PositiveInt = 8
    """Contexts per forward pass."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class InterpretSection:
    tokens: PositiveInt = 200_000
    """Tokens scanned for each feature's top-activating contexts."""
    n_top: PositiveInt = 20
    """Top-activating contexts kept per feature."""
    n_features: PositiveInt | None = None
    """Features shown in the dashboard (default: all)."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class SteerSection:
    enabled: bool = True
    """Precompute steered continuations of a few fixed prompts for the dashboard's top
    features (RUN/features/steering.json). Measured: adds 7-12 s (6 CPU-seconds) to the demo on a 2-core CPU."""
    features: PositiveInt = 8
    """How many features: the live ones that fire most often, leaving out dense ones (firing
    on more than a tenth of the tokens)."""
    prompts: list[str] = field(default_factory=lambda: ["The king said", "I will tell thee"])
    """The prompts continued (set them in the config file: on the command line a list is split at spaces)."""
    strengths: list[float] = field(default_factory=lambda: [1.0, 4.0])
    """Steering strengths, as multiples of each feature's max activation: x ← x + m·‖max_F·w_F‖·d_F."""
    max_new_tokens: PositiveInt = 16
    """Tokens generated per continuation (greedy)."""

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ConfigValueError("[steer] prompts must be non-empty texts.", field="steer.prompts")
        if not self.strengths:
            raise ConfigValueError("[steer] strengths needs at least one value.", field="steer.strengths")


@dataclass
class LoggingSection:
    tensorboard: bool = False
    """Also log training metrics to TensorBoard (RUN/tensorboard; needs the tensorboard package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs wandb; set WANDB_MODE=offline to log without network)."""
    wandb_project: str = "saekit"
    """W&B project name."""

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    """The language model and the hook point."""
    corpus: CorpusSection = field(default_factory=CorpusSection)
    """The texts and how they become tokens."""
    harvest: HarvestSection = field(default_factory=HarvestSection)
    """The activation store."""
    sae: SAESection = field(default_factory=SAESection)
    """The sparse autoencoder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The trainer (fields of saekit.training.TrainConfig)."""
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    """Evaluation on held-out text."""
    interpret: InterpretSection = field(default_factory=InterpretSection)
    """Feature statistics and the dashboard."""
    logging: LoggingSection = field(default_factory=LoggingSection)
    """Where training metrics go besides RUN/train/train_log.jsonl."""
    steer: SteerSection = field(default_factory=SteerSection)
    """Steered continuations for the dashboard (an optional stage; its settings are kept in
    its own output, so changing them redoes only that stage)."""

    def __post_init__(self) -> None:
        if self.model.hook_out is not None and not self.sae.transcoder:
            self.sae.transcoder = True  # a target hook point makes the SAE a transcoder
        if self.sae.transcoder and self.model.hook_out is None and self.sae.load is None:
            raise ConfigValueError(
                "[sae] transcoder needs a target: set model.hook_out (e.g. layers.9.mlp_out).",
                field="sae.transcoder",
                value=self.sae.transcoder,
            )

    # ---- reading ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> RunConfig:
        return from_dict(cls, data, where=where)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_config_file(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self) -> dict[str, Any]:
        """The fields that change what a run makes (not how it shows progress, where it
        logs, or on which device it runs)."""
        data = self.to_dict()
        data.pop("logging")
        data.pop("steer")  # a presentation stage: its file records its settings (pipeline.py)
        data["model"].pop("device")
        data["train"] = self.train.identity()
        return data

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """overrides: {"train.steps": 100, ...} -> a new, validated config."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if section not in data or not name:
                raise ConfigValueError(f"--{dotted}: no such config field; the sections are {sorted(data)}.")
            data[section][name] = value
        return RunConfig.from_dict(data, where="the config with command-line overrides")

    def check(self, d_in: int) -> SAEConfig | None:
        """Everything that can be checked against the model's width before work starts
        (an SAE to load is checked when it is loaded)."""
        if self.sae.load is not None:
            return None
        try:
            return self.sae.check(d_in)
        except ConfigError as error:
            message = str(error).removeprefix("sae: ")
            raise ConfigValueError(
                f"[sae] {message}", field=f"sae.{error.field}" if error.field else None, value=error.value
            ) from None


def section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigValueError(f"{path}: no such config file.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigValueError(f"{path} is {path.stat().st_size:,} bytes; a run config is a few kilobytes.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigValueError(f"{path} is not UTF-8 text; a config is a TOML, YAML or JSON file.") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigValueError(f"{path}: not valid TOML: {error}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigValueError(f"{path}: not valid JSON: {error}") from None
    else:
        raise ConfigValueError(f"{path}: a config is a .toml, .yaml/.yml or .json file.")
    if not isinstance(data, dict):
        raise ConfigValueError(
            f"{path}: a config is a table of sections ([model], [train], ...), not a {type(data).__name__}."
        )
    return data


def describe_config() -> str:
    """Every field with its default and documentation, as a commented TOML file."""
    lines = ["# saekit run configuration: every field, its default, and what it means."]
    for section, cls in section_classes().items():
        lines.append(f"\n[{section}]")
        docs = field_docs(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            for doc_line in _wrap(docs.get(f.name, "")):
                lines.append(f"# {doc_line}")
            value = getattr(defaults, f.name)
            # TOML has no null: an unset field is shown commented out.
            lines.append(f"# {f.name} =  (unset)" if value is None else f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 88) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)
