"""A model's residual width from its metadata alone (no weights loaded), so that a run's
configuration (k ≤ d_sae, ...) is checked before any work starts."""

from __future__ import annotations

import json

from .._runtime.errors import ConfigValueError
from .model import model_path

_EMBEDDED = {"default", "smollm2", "gemma3-270m"}


def model_width(spec: str) -> int:
    try:
        path = model_path(spec)
    except FileNotFoundError as error:
        raise ConfigValueError(f"model.name: {error}") from None
    if path is None:
        if "/" not in spec:
            raise ConfigValueError(
                f"model.name: {spec!r} is neither an embedded model ({', '.join(sorted(_EMBEDDED))}), "
                "a local file or folder, nor a Hub id (owner/name)."
            )
        from transformers import AutoConfig

        return _width_of(AutoConfig.from_pretrained(spec).to_dict(), spec)
    if path.is_file() and path.suffix == ".gguf":
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = _gguf_value(reader, "general.architecture")
        return int(_gguf_value(reader, f"{arch}.embedding_length"))
    config = path / "config.json"
    if not config.is_file():
        raise ConfigValueError(f"model.name: {path} is neither a .gguf file nor a folder with a config.json.")
    return _width_of(json.loads(config.read_text()), str(path))


def _width_of(config: dict, where: str) -> int:
    config = config.get("text_config", config)
    for key in ("hidden_size", "n_embd", "d_model"):
        if key in config:
            return int(config[key])
    raise ConfigValueError(f"model.name: cannot find the model width (hidden_size) in the config of {where}.")


def _gguf_value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise ConfigValueError(f"model.name: the GGUF file has no {key} entry.")
    value = field.parts[field.data[0]]
    return bytes(value).decode() if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value[0]
