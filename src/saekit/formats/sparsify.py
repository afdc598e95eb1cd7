"""EleutherAI sparsify checkpoints: one folder per hookpoint (``layers.5``, ``layers.5.mlp``,
...) holding ``cfg.json`` (the SparseCoderConfig fields and ``d_in``) and
``sae.safetensors``:

    encoder.weight [M, d_in] (an nn.Linear), encoder.bias [M], W_dec [M, d_in], b_dec [d_in],
    W_skip [d_in, d_in] with skip_connection

sparsify encodes f = TopK(ReLU((x − b_dec) W_encᵀ + b_enc)) — x itself for a transcoder —
and decodes f W_dec + b_dec (+ x W_skipᵀ). ReLU before or after the top-k selection gives
the same f, so this is saekit's TopK SAE (or transcoder) with W_enc = encoder.weightᵀ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..sae.base import SparseAutoencoder
from ..sae.config import SAEConfig
from ..sae.registry import architecture
from .errors import FormatError
from .tensorfile import check_tensors, load_tensors, read_header, read_json

WEIGHTS_FILE = "sae.safetensors"
_HOOKPOINT = re.compile(
    r"(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?"
)


def load_folder(path: Path) -> SparseAutoencoder:
    raw = read_json(path / "cfg.json", what="a sparsify cfg.json")
    d_in = raw.get("d_in")
    if not isinstance(d_in, int) or d_in < 1:
        raise FormatError(f"{path / 'cfg.json'}: d_in is {d_in!r}; a sparsify config records the input width there.")
    if raw.get("activation", "topk") != "topk":
        raise FormatError(
            f"{path}: sparsify's {raw.get('activation')!r} activation (one active latent per group) has "
            "no saekit counterpart; saekit reads sparsify's TopK coders."
        )
    weights = path / WEIGHTS_FILE
    header = read_header(weights)
    if "encoder.weight" not in header:
        raise FormatError(f"{weights} has no encoder.weight; it is not a sparsify coder.")
    d_sae = header["encoder.weight"][1][0]
    transcode, skip = bool(raw.get("transcode", False)), bool(raw.get("skip_connection", False))
    shapes = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    check_tensors(weights, header, shapes, f"cfg.json (a sparsify coder with d_in={d_in}, {d_sae} latents)")
    k = raw.get("k")
    if not isinstance(k, int) or not 1 <= k <= d_sae:
        raise FormatError(f"{path / 'cfg.json'}: k is {k!r}, not a number of latents in [1, {d_sae}].")
    tensors = {name: value.float() for name, value in load_tensors(weights).items()}
    hook, model = _hook_and_model(path)
    cfg = SAEConfig.from_dict(
        {
            "arch": "topk",
            "d_in": d_in,
            "d_sae": d_sae,
            "k": k,
            "transcoder": "skip" if skip else transcode,
            "d_out": d_in if (skip or transcode) else None,
            "apply_b_dec_to_input": not (skip or transcode),
            "dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(header["W_dec"][0], "float32"),
            "hook": hook,
            "model": model,
            "provenance": {"format": "sparsify", "sparsify_config": raw},
        },
        source=str(path / "cfg.json"),
    )
    ours = {
        "W_enc": tensors["encoder.weight"].t(),
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if skip:
        ours["W_skip"] = tensors["W_skip"]
        if not transcode:  # an SAE with a skip term: it subtracts b_dec, a transcoder does not
            ours["b_enc"] = ours["b_enc"] - tensors["b_dec"] @ ours["W_enc"]
    return architecture("topk").from_tensors(cfg, ours)


def _hook_and_model(path: Path) -> tuple[str | None, str | None]:
    """saekit's hook point for a sparsify hookpoint folder name, and the run's model."""
    hook = None
    match = _HOOKPOINT.fullmatch(path.name)
    if match:
        site = {"mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out", "attention": "attn_out"}.get(
            match.group(2) or "", "resid_post"
        )
        hook = f"layers.{match.group(1)}.{site}"
    model = None
    run_config = path.parent / "config.json"
    if run_config.is_file():
        try:
            data: Any = json.loads(run_config.read_text())
            model = data.get("model") if isinstance(data, dict) else None
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            model = None
    return hook, model if isinstance(model, str) else None
