"""SAELens 6 folders (``cfg.json`` + ``sae_weights.safetensors``): its architecture names,
config keys and tensor layouts, both ways. Nothing else in saekit knows them.

Writing: every saekit SAE maps to the SAELens architecture that computes the same
function, f and x̂ equal on every input:

    relu → standard        gated → gated        jumprelu → jumprelu        topk → topk
    batchtopk, matryoshka_batchtopk → jumprelu, θ_i = the running threshold (as SAELens
        itself saves BatchTopK for inference)
    transcoders: relu → transcoder / skip_transcoder; jumprelu, batchtopk, matryoshka →
        jumprelu_transcoder / jumprelu_skip_transcoder; topk and gated with d_out = d_in →
        topk / gated with apply_b_dec_to_input false (hook_name_out says what they predict)

A fitted feature scale s is folded into the decoder rows (x̂ = f (diag(s) W_dec) + b_dec);
saekit keeps s and the unfolded W_dec beside, for an exact round trip. TopK and gated
skip transcoders have no SAELens counterpart: their cfg.json says ``"architecture":
"saekit:<arch>"``, which SAELens refuses to load by name.

Reading: the inference architectures of SAELens 6 (standard, gated, jumprelu, topk,
transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder) and the
training forms saved by ``save_model`` (batchtopk, matryoshka_batchtopk too), with
``apply_b_dec_to_input`` either way, ``rescale_acts_by_decoder_norm`` folded into the
weights, ``expected_average_only_in`` with the scaling factor of activation_scaler.json
folded in, and ``constant_norm_rescale`` / ``layer_norm`` applied at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..sae.base import SparseAutoencoder
from ..sae.config import SAEConfig
from ..sae.hooks import parse_hook
from ..sae.registry import architecture
from .errors import FormatError
from .tensorfile import check_tensors, load_tensors, read_header

SAELENS_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: SAELens treats a folder without one as pre-6.0
and rebuilds its metadata from top-level keys, dropping ours."""
WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
SPARSITY_FILE = "sparsity.safetensors"

INFERENCE = (
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
)
TRAINING_ONLY = ("batchtopk", "matryoshka_batchtopk")
UNSUPPORTED = {
    "abstopk": "it keeps the k largest |pre-activations| with their signs, and saekit's features are non-negative",
    "temporal": "it attends over earlier tokens, which no saekit architecture does",
    "matching_pursuit": "it encodes by matching pursuit, which no saekit architecture does",
}


# ---- writing ---------------------------------------------------------------------------------------
def architecture_for(cfg: SAEConfig) -> str | None:
    """The SAELens architecture computing what ``cfg``'s SAE computes, or None."""
    thresholded = cfg.arch in ("jumprelu", "batchtopk", "matryoshka_batchtopk")
    same_width = (cfg.d_out or cfg.d_in) == cfg.d_in
    if not cfg.transcoder:
        return {"relu": "standard", "gated": "gated", "topk": "topk"}.get(cfg.arch, "jumprelu" if thresholded else None)
    if cfg.transcoder == "skip":
        return "skip_transcoder" if cfg.arch == "relu" else "jumprelu_skip_transcoder" if thresholded else None
    if cfg.arch == "relu":
        return "transcoder"
    if thresholded:
        return "jumprelu_transcoder"
    return cfg.arch if cfg.arch in ("topk", "gated") and same_width else None


def header(cfg: SAEConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """The SAELens keys of cfg.json for an SAE with ``cfg``."""
    arch = architecture_for(cfg)
    out: dict[str, Any] = {
        "architecture": arch or f"saekit:{cfg.arch}" + ("_skip_transcoder" if cfg.transcoder == "skip" else ""),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": cfg.input_normalization,
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_VERSION, **metadata},
    }
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if arch in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        out["d_out"] = cfg.d_out or cfg.d_in
    return out


def to_saelens_tensors(cfg: SAEConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the weights file SAELens reads, the tensors saekit keeps beside it) from saekit's."""
    weights = dict(tensors)
    extra: dict[str, Tensor] = {}
    if "feature_scale" in weights:
        scale = weights.pop("feature_scale")
        extra = {"feature_scale": scale, "W_dec": weights["W_dec"]}
        weights["W_dec"] = (weights["W_dec"].float() * scale.float()[:, None]).to(weights["W_dec"].dtype)
    if "threshold" in weights and weights["threshold"].ndim == 0:  # one running threshold for every feature
        weights["threshold"] = weights["threshold"].expand(cfg.d_sae).contiguous()
    return weights, extra


def from_saelens_tensors(
    expected: dict[str, tuple[int, ...]], weights: dict[str, Tensor], extra: dict[str, Tensor]
) -> dict[str, Tensor]:
    """saekit's tensors back from what ``to_saelens_tensors`` wrote (bit for bit)."""
    tensors = {**weights, **extra}
    if "threshold" in expected and expected["threshold"] == () and tensors["threshold"].ndim == 1:
        threshold = tensors["threshold"]
        if not bool((threshold == threshold[0]).all()):
            raise FormatError("a BatchTopK SAE's threshold tensor holds several values; it was edited or damaged.")
        tensors["threshold"] = threshold[0].clone()
    return tensors


def saved_shapes(expected: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shapes in sae_weights.safetensors of an SAE whose own tensors have ``expected``."""
    shapes = {name: shape for name, shape in expected.items() if name != "feature_scale"}
    if shapes.get("threshold") == ():
        shapes["threshold"] = (expected["W_enc"][1],)
    return shapes


# ---- reading SAELens's own folders -------------------------------------------------------------------
def is_saelens_folder(raw: dict[str, Any]) -> bool:
    return isinstance(raw.get("architecture"), str) and "d_in" in raw and "d_sae" in raw


def foreign_config(raw: dict[str, Any], folder: Path) -> tuple[SAEConfig, dict[str, Any]]:
    """(saekit's config for a folder SAELens wrote, how to map its tensors)."""
    arch = raw["architecture"]
    if arch in UNSUPPORTED:
        raise FormatError(f"{folder}: SAELens architecture {arch!r} has no saekit counterpart: {UNSUPPORTED[arch]}.")
    if arch not in INFERENCE + TRAINING_ONLY:
        known = ", ".join(INFERENCE + TRAINING_ONLY)
        raise FormatError(f"{folder}: SAELens architecture {arch!r} is not one saekit reads ({known}).")
    norm = raw.get("normalize_activations") or "none"
    if norm is True:  # a pre-6.0 boolean
        norm = "expected_average_only_in"
    if norm not in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        raise FormatError(
            f"{folder}: normalize_activations={norm!r} is not one saekit can reproduce "
            "(none, expected_average_only_in, constant_norm_rescale, layer_norm)."
        )
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise FormatError(f"{folder / CONFIG_FILE}: metadata is not a table.")
    transcoder: bool | str = False
    if "transcoder" in arch:
        transcoder = "skip" if "skip" in arch else True
    base = {
        "standard": "relu",
        "transcoder": "relu",
        "skip_transcoder": "relu",
        "gated": "gated",
        "topk": "topk",
        "batchtopk": "batchtopk",
        "matryoshka_batchtopk": "matryoshka_batchtopk",
    }.get(arch, "jumprelu")
    options: dict[str, Any] = {}
    if base == "relu":
        options["l1_coefficient"] = _number(raw.get("l1_coefficient", 0.0))
    elif base == "gated":
        options["l1_coefficient"] = _number(raw.get("l1_coefficient", 0.0))
    elif base == "jumprelu":
        options["l0_coefficient"] = _number(raw.get("l0_coefficient", 0.0))
    else:
        k = raw.get("k")
        if not isinstance(k, (int, float)) or k != int(k) or k < 1:
            if base in TRAINING_ONLY:  # a fractional mean k: at inference the SAE is its threshold
                base, options = "jumprelu", {"l0_coefficient": 0.0}
            else:
                raise FormatError(f"{folder / CONFIG_FILE}: k is {k!r}, not a whole number of active features.")
        if base != "jumprelu":
            options["k"] = min(int(k), int(raw["d_sae"]))
        if base == "matryoshka_batchtopk":
            options["group_sizes"] = _group_sizes(raw.get("matryoshka_widths"), int(raw["d_sae"]), folder)
    cfg = SAEConfig.from_dict(
        {
            "arch": base,
            "d_in": raw["d_in"],
            "d_sae": raw["d_sae"],
            **options,
            "d_out": raw.get("d_out") if transcoder else None,
            "transcoder": transcoder,
            "apply_b_dec_to_input": bool(raw.get("apply_b_dec_to_input", True)) if not transcoder else False,
            "input_normalization": norm if norm in ("constant_norm_rescale", "layer_norm") else "none",
            "dtype": _dtype(raw.get("dtype", "float32")),
            "hook": _hook(meta.get("hook_name")),
            "model": meta.get("model_name"),
            "provenance": {"format": "saelens", "saelens_architecture": arch, "metadata": meta},
        },
        source=str(folder / CONFIG_FILE),
    )
    plan = {
        "arch": arch,
        "rescale": bool(raw.get("rescale_acts_by_decoder_norm", False)),
        "scaling_factor": _scaling_factor(folder) if norm == "expected_average_only_in" else None,
    }
    return cfg, plan


def _group_sizes(widths: Any, d_sae: int, folder: Path) -> list[int]:
    """saekit's group sizes from SAELens's matryoshka_widths (cumulative; SAELens adds a last
    level of d_sae when the list stops short of it, and so does this)."""
    if not isinstance(widths, list) or not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise FormatError(f"{folder / CONFIG_FILE}: matryoshka_widths is {widths!r}, not a list of positive widths.")
    if widths[-1] != d_sae:
        widths = [*widths, d_sae]
    if any(b <= a for a, b in zip(widths, widths[1:])) or widths[-1] != d_sae:
        raise FormatError(f"{folder / CONFIG_FILE}: matryoshka_widths {widths} must increase up to d_sae={d_sae}.")
    return [widths[0]] + [b - a for a, b in zip(widths, widths[1:])]


def foreign_shapes(cfg: SAEConfig, plan: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors (and shapes) a SAELens folder of this architecture holds."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out or cfg.d_in
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if cfg.arch == "gated":
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if plan["arch"] in TRAINING_ONLY:
        shapes["topk_threshold"] = ()
    elif cfg.arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if cfg.transcoder == "skip":
        shapes["W_skip"] = (d_out, d_in)
    return shapes


def foreign_tensors(cfg: SAEConfig, plan: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """saekit's tensors computing what the SAELens SAE computes (float32)."""
    t = {name: value.float() for name, value in tensors.items()}
    if "topk_threshold" in t:
        value = t.pop("topk_threshold")
        t["threshold"] = value if cfg.arch in TRAINING_ONLY else value.expand(cfg.d_sae).clone()
    if plan["rescale"]:  # selection on z·‖d_i‖, decoding f/‖d_i‖: the same with the norms folded in
        norms = t["W_dec"].norm(dim=1).clamp_min(1e-8)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms, t["b_enc"] * norms, t["W_dec"] / norms[:, None]
    if cfg.arch == "jumprelu":
        # SAELens: ReLU(z)·1[z > θ]; saekit: z·1[z > θ]. Equal for θ ≥ 0, and clamping θ at 0
        # changes nothing SAELens computes (z in (θ, 0] gives 0 either way).
        t["threshold"] = t["threshold"].clamp_min(0)
    s = plan["scaling_factor"]
    if s is not None:  # trained on s·x: read raw x
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * s, t["W_dec"] / s, t["b_dec"] / s
    return t


def load_folder(path: Path, raw: dict[str, Any]) -> SparseAutoencoder:
    """An SAE folder SAELens wrote (``raw``: its cfg.json), as the saekit SAE computing the same."""
    cfg, plan = foreign_config(raw, path)
    cls = architecture(cfg.arch)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FormatError(f"{path} has no {WEIGHTS_FILE}; SAELens folders hold {CONFIG_FILE} and {WEIGHTS_FILE}.")
    shapes = foreign_shapes(cfg, plan)
    header = read_header(weights)
    optional = {"scaling_factor"} & set(header)  # SAELens writes it as all ones when unused
    check_tensors(
        weights,
        {k: v for k, v in header.items() if k not in optional},
        shapes,
        f"cfg.json (SAELens {plan['arch']}, d_in={cfg.d_in}, d_sae={cfg.d_sae})",
    )
    tensors = load_tensors(weights)
    if "scaling_factor" in tensors:
        factor = tensors.pop("scaling_factor")
        if not bool((factor == 1).all()):
            raise FormatError(
                f"{weights}: a finetuning scaling_factor other than 1 is not something saekit reads "
                "(SAELens 6 cannot load it either)."
            )
    sae = cls.from_tensors(cfg, foreign_tensors(cfg, plan, tensors)).eval()
    if cfg.arch == "relu" and not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(cfg.d_sae), atol=1e-4):
        sae.cfg.decoder_norm = "weighted"  # a free decoder: further training keeps it free
    return sae


def _scaling_factor(folder: Path) -> float | None:
    """activation_scaler.json's scaling factor (SAELens training checkpoints), if any."""
    file = folder / "activation_scaler.json"
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text()).get("scaling_factor")
    except (json.JSONDecodeError, AttributeError, OSError) as error:
        raise FormatError(f"{file} is unreadable ({error}).") from None
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not value > 0:
        raise FormatError(f"{file}: scaling_factor is {value!r}, not a positive number.")
    return float(value)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0.0


def _dtype(name: Any) -> str:
    text = str(name).removeprefix("torch.")
    return text if text in ("float32", "bfloat16", "float16", "float64") else "float32"


def _hook(name: Any) -> str | None:
    """saekit's name for a TransformerLens hook name (itself when saekit has no name for it)."""
    if not isinstance(name, str):
        return None
    try:
        return str(parse_hook(name))
    except ValueError:
        return name


def read_sparsity(folder: Path) -> Tensor | None:
    """The feature frequencies of a folder's sparsity.safetensors (log10 density), if any."""
    from safetensors.torch import load_file

    file = folder / SPARSITY_FILE
    if not file.is_file():
        return None
    return torch.pow(10.0, load_file(str(file))["sparsity"].float())
