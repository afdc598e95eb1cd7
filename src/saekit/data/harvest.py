"""Tokens ─► activations on disk: run the model over a tokenised corpus, write stores.

One forward pass serves every hook point asked for, and stops after the deepest one.
Contexts are processed in corpus order, ``batch_contexts`` per forward pass, and grouped
into shards of ``shard_tokens // context_size`` contexts. Shard boundaries depend only on
the corpus and the options, so a rerun of an interrupted harvest finds the same shards,
keeps those that pass their checksum, and carries on from the first missing one.

Only train-mask tokens are stored (see data/store.py). ``max_tokens`` stops after that
many stored rows, cutting the last context short if needed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runtime.errors import UsageError
from .corpus import TokenizedCorpus
from .model import LoadedModel, capture, resolve_hook
from .store import STORE_DTYPES, ActivationStore, StoreWriter

DEFAULT_BATCH_CONTEXTS = 8
DEFAULT_SHARD_TOKENS = 1 << 16


@dataclass
class HarvestPlan:
    """What a harvest writes, decided by the corpus and the options alone, so that every
    rank of a distributed harvest (data/distributed_harvest.py) computes the same plan."""

    names: list[str]
    """Resolved hook points."""
    paths: dict[str, Path]
    """Store folder of each hook point."""
    header: dict[str, Any]
    """Manifest fields shared by every hook's store (each adds its "hook")."""
    mask: torch.Tensor
    """[n_contexts, T] bool: rows to store."""
    shard_contexts: int
    n_shards: int
    single: bool
    """One hook given as a string: the store is ``out`` itself."""

    def contexts(self, shard: int) -> tuple[int, int]:
        """Contexts [begin, end) of a shard."""
        n_contexts = self.mask.shape[0]
        return shard * self.shard_contexts, min((shard + 1) * self.shard_contexts, n_contexts)


def plan_harvest(
    loaded: LoadedModel,
    corpus: TokenizedCorpus,
    hooks: str | list[str],
    out: str | Path,
    *,
    max_tokens: int | None = None,
    dtype: str = "bfloat16",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> HarvestPlan:
    """Check the options and decide the stores' headers and shard boundaries (no work)."""
    single = isinstance(hooks, str)
    names = [str(resolve_hook(loaded, h)) for h in ([hooks] if single else hooks)]
    if not names:
        raise UsageError("harvest needs at least one hook point.")
    if len(set(names)) != len(names):
        raise UsageError(f"hook points are repeated: {names}.")
    if dtype not in STORE_DTYPES:
        raise UsageError(f"store dtype {dtype!r} is not supported; use one of {sorted(STORE_DTYPES)}.")
    if shard_tokens < 1:
        raise UsageError("shard_tokens must be positive.")
    out = Path(out)

    mask, n_contexts, n_tokens = _harvest_mask(corpus, max_tokens)
    shard_contexts = max(1, shard_tokens // corpus.context_size)
    n_shards = math.ceil(n_contexts / shard_contexts)
    header = {
        "model": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "dtype": dtype,
        "d_in": loaded.d_model,
        "context_size": corpus.context_size,
        "tokenizer": corpus.options.get("tokenizer"),
        "corpus_fingerprint": corpus.fingerprint,
        "corpus": corpus.describe(),
        "n_tokens": n_tokens,
        "n_contexts": n_contexts,
        "shard_contexts": shard_contexts,
        "n_shards": n_shards,
        "model_dtype": str(loaded.dtype).removeprefix("torch."),
        "stored_rows": "tokens in the corpus train mask, in corpus order",
    }
    paths = {name: out if single else out / name for name in names}
    return HarvestPlan(names, paths, header, mask, shard_contexts, n_shards, single)


def harvest_shard(
    loaded: LoadedModel,
    corpus: TokenizedCorpus,
    plan: HarvestPlan,
    shard: int,
    names: list[str],
    *,
    batch_contexts: int = DEFAULT_BATCH_CONTEXTS,
    bar=None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """One shard's rows: ({hook: activations [rows, d_in] in the store dtype}, meta int32 [rows, 3]),
    from forward passes of ``batch_contexts`` contexts counted from the shard's start."""
    begin, end = plan.contexts(shard)
    mask = plan.mask
    store_dtype = STORE_DTYPES[plan.header["dtype"]]
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for b in range(begin, end, batch_contexts):
        e = min(b + batch_contexts, end)
        keep = mask[b:e]
        acts = capture(loaded, corpus.tokens[b:e], names)
        device_keep = keep.to(loaded.device)
        for name in names:
            parts[name].append(acts[name][device_keep].to("cpu", store_dtype))
        if bar is not None:
            bar.update(int(keep.sum()))
    keep = mask[begin:end]
    meta = (
        torch.stack(
            [
                corpus.tokens[begin:end][keep],
                corpus.doc_ids[begin:end][keep].long(),
                corpus.positions[begin:end][keep].long(),
            ],
            dim=1,
        )
        .numpy()
        .astype(np.int32)
    )
    return {name: torch.cat(parts[name]) for name in names}, meta


def harvest(
    loaded: LoadedModel,
    corpus: TokenizedCorpus,
    hooks: str | list[str],
    out: str | Path,
    *,
    max_tokens: int | None = None,
    dtype: str = "bfloat16",
    batch_contexts: int = DEFAULT_BATCH_CONTEXTS,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, ActivationStore]:
    """Harvest activations at ``hooks`` into stores and return them opened, as {hook: store}.

    One hook (a string): the store is ``out`` itself. A list of hooks: one store per hook
    at ``out/<hook>/``. ``dtype`` is the stored dtype ("bfloat16" or "float32"), whatever
    the model runs in. A finished store with the same settings is returned as it is; one
    made with other settings is refused unless ``overwrite``, which deletes only the
    files saekit wrote there (see StoreWriter).
    """
    if batch_contexts < 1:
        raise UsageError("batch_contexts must be positive.")
    plan = plan_harvest(loaded, corpus, hooks, out, max_tokens=max_tokens, dtype=dtype, shard_tokens=shard_tokens)
    names = plan.names
    writers: dict[str, StoreWriter] = {}
    try:
        for name in names:
            writers[name] = StoreWriter(plan.paths[name], {**plan.header, "hook": name}, overwrite=overwrite)
        first = min(writer.done_shards for writer in writers.values())
        done_rows = int(plan.mask[: first * plan.shard_contexts].sum())

        from tqdm.auto import tqdm

        bar = tqdm(
            total=plan.header["n_tokens"],
            initial=done_rows,
            unit="tok",
            unit_scale=True,
            disable=not progress or first == plan.n_shards,
            desc=f"harvest {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else ""),
        )
        with bar:
            for shard in range(first, plan.n_shards):
                todo = [name for name in names if writers[name].done_shards <= shard]
                parts, meta = harvest_shard(loaded, corpus, plan, shard, todo, batch_contexts=batch_contexts, bar=bar)
                for name in todo:
                    writers[name].write_shard(shard, parts[name], meta, plan.contexts(shard))
        return {name: writer.finish() for name, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.close()


def _harvest_mask(corpus: TokenizedCorpus, max_tokens: int | None) -> tuple[torch.Tensor, int, int]:
    """(mask [n_contexts, T] of rows to store, n_contexts to run, n_tokens to store)."""
    mask = corpus.train_mask
    per_context = mask.sum(dim=1).cumsum(0)
    total = int(per_context[-1]) if len(per_context) else 0
    if total == 0:
        raise UsageError("the corpus has no tokens in its train mask: nothing to harvest.")
    if max_tokens is None or max_tokens >= total:
        if max_tokens is not None and max_tokens > total:
            warnings.warn(
                f"the corpus has only {total} trainable tokens, fewer than the {max_tokens} asked for; "
                "harvesting all of them.",
                stacklevel=3,
            )
        return mask, len(corpus), total
    if max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1, got {max_tokens}.")
    n_contexts = int(torch.searchsorted(per_context, max_tokens)) + 1  # first context reaching max_tokens
    mask = mask[:n_contexts].clone()
    last = mask[-1]
    extra = int(per_context[n_contexts - 1]) - max_tokens
    if extra:
        drop = last.nonzero().flatten()[-extra:]
        last[drop] = False
    return mask, n_contexts, max_tokens
