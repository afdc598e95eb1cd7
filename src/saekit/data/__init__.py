"""The data path: texts ─► tokens ─► model ─► activations ─► store ─► batches.

    corpus.py   read_documents, tokenize           texts ─► [n_contexts, context_size] tokens
    model.py    load_model, capture, splice        hook points such as "layers.15.resid_post"
    harvest.py  harvest                            tokens ─► activation stores on disk
    store.py    open_store, ActivationStore        sharded, checksummed, memory-mapped
    shuffle.py  shuffled_batches                   the shuffle buffer: chunks ─► batches
    live.py     LiveActivations                    a live model stream, no store on disk
    source.py   as_source                          anything ─► a batch source for the trainer

Names are imported lazily (``saekit.data.open_store`` works) so that importing the
package does not pull in transformers. ``harvest`` is reached as
``saekit.data.harvest.harvest`` (the module shares its name).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Document": "corpus",
    "TokenizedCorpus": "corpus",
    "default_corpus_path": "corpus",
    "read_documents": "corpus",
    "tokenize": "corpus",
    "LoadedModel": "model",
    "HookPoint": "model",
    "load_model": "model",
    "default_model_path": "model",
    "parse_hook": "model",
    "valid_hooks": "model",
    "capture": "model",
    "splice": "model",
    "unembed": "model",
    "ActivationStore": "store",
    "StoreError": "store",
    "open_store": "store",
    "shuffled_batches": "shuffle",
    "LiveActivations": "live",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
