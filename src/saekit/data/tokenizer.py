"""A model's tokenizer without its weights, for commands that only need to turn token ids
into text (``saekit compare`` labelling features from their statistics)."""

from __future__ import annotations

from typing import Any

from .model import DEFAULT_MODEL, model_path


def load_tokenizer(spec: str | None) -> Any:
    """The tokenizer ``load_model(spec)`` would give, loaded alone (a .gguf file's from its
    metadata, a folder's from its files, a Hub id's from the Hub)."""
    from transformers import AutoTokenizer

    spec = DEFAULT_MODEL if spec is None or str(spec) == "default" else str(spec)
    path = model_path(spec)
    if path is None:
        return AutoTokenizer.from_pretrained(spec)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))
