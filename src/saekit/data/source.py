"""What the trainer and the evaluator read: a *batch source*.

A batch source has ``d_in`` and

    batches(batch_size, *, seed=0, start=0, rank=0, world_size=1) -> Iterator[Tensor]

an endless stream of float tensors [batch_size // world_size, d_in]. Global batch i is a
function of (seed, i) alone, and rank r receives rows [r·b, (r+1)·b) of it, so a run on
W ranks sees exactly the data of a run on one. ``start`` skips the first global batches
(resume). Activation stores and live model streams (data/store.py, data/live.py)
implement it; this module adapts an in-memory tensor or any iterable of batches.

For evaluation, ``iterate_once(data, batch_size)`` walks a finite source in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._runtime.errors import UsageError
from .pairs import Pair, PairedSource, is_paired_folder, open_pairs, tensor_fingerprint
from .shuffle import rank_slice
from .store import open_store


@runtime_checkable
class BatchSource(Protocol):
    d_in: int

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Tensor]: ...


class TensorSource:
    """Random batches without replacement from an in-memory [N, d_in] tensor; a new
    permutation every epoch (a pass over N // batch_size batches)."""

    def __init__(self, activations: Tensor) -> None:
        if activations.ndim != 2:
            raise UsageError(f"activations must be a [tokens, d_in] tensor, got shape {tuple(activations.shape)}.")
        if activations.shape[0] == 0:
            raise UsageError("activations is empty: it has no rows to train on.")
        self.activations = activations
        self.d_in = activations.shape[1]

    def __len__(self) -> int:
        return self.activations.shape[0]

    def batches(self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        n = self.activations.shape[0]
        if batch_size > n:
            raise UsageError(f"batch_size={batch_size} is larger than the {n} rows of activations; lower it.")
        mine = rank_slice(batch_size, rank, world_size)
        per_epoch = n // batch_size
        i = start
        while True:
            epoch, within = divmod(i, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            for j in range(within, per_epoch):
                rows = order[j * batch_size : (j + 1) * batch_size][mine]
                yield self.activations[rows.to(self.activations.device)].float()
                i += 1

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        for begin in range(0, self.activations.shape[0], batch_size):
            yield self.activations[begin : begin + batch_size].float()

    def fingerprint(self) -> str:
        return tensor_fingerprint(self.activations)

    def first_nonfinite(self) -> str | None:
        bad = ~torch.isfinite(self.activations)
        if not bool(bad.any()):
            return None
        row, column = (int(i) for i in bad.nonzero()[0])
        return f"row {row}, column {column} of the activations tensor: {float(self.activations[row, column])}"


class IterableSource:
    """Any iterable of [*, d_in] tensors, re-cut into batches of exactly batch_size rows.
    The iterable is consumed in order (it is the caller's job to shuffle it); a
    re-iterable (a list, a DataLoader) restarts when exhausted, a one-shot iterator ends."""

    def __init__(self, iterable: Iterable[Tensor], d_in: int | None = None) -> None:
        self.iterable = iterable
        self._peeked: list[Tensor] = []
        self._iterator = iter(iterable)
        if d_in is None:
            first = next(self._iterator, None)
            if first is None:
                raise UsageError("the data iterable is empty: it yielded no batch.")
            self._peeked.append(first)
            d_in = (first.x if isinstance(first, Pair) else first).shape[-1]
        self.d_in = d_in

    def _rows(self) -> Iterator[Tensor]:
        yield from self._peeked
        self._peeked = []
        yield from self._iterator
        while self.iterable is not self._iterator:
            self._iterator = iter(self.iterable)
            empty = True
            for chunk in self._iterator:
                empty = False
                yield chunk
            if empty:
                return

    def batches(self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        mine = rank_slice(batch_size, rank, world_size)
        pending: list[Tensor] = []
        held = 0
        produced = 0
        for chunk in self._rows():
            chunk = chunk.reshape(-1, chunk.shape[-1])
            if chunk.shape[-1] != self.d_in:
                raise UsageError(f"a batch has width {chunk.shape[-1]}, but earlier batches had d_in={self.d_in}.")
            pending.append(chunk)
            held += chunk.shape[0]
            while held >= batch_size:
                joined = torch.cat(pending)
                batch, rest = joined[:batch_size], joined[batch_size:]
                pending, held = [rest], rest.shape[0]
                if produced >= start:
                    yield batch[mine].float()
                produced += 1

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        if self.iterable is self._iterator:  # a one-shot iterator: what is left of it
            chunks = itertools.chain(self._peeked, self._iterator)
            self._peeked = []
        else:
            chunks = iter(self.iterable)
        for chunk in chunks:
            if isinstance(chunk, Pair):
                yield Pair(
                    chunk.x.reshape(-1, chunk.x.shape[-1]).float(), chunk.y.reshape(-1, chunk.y.shape[-1]).float()
                )
            else:
                yield chunk.reshape(-1, chunk.shape[-1]).float()


def as_source(data) -> BatchSource:
    """Turn what a user passes as training data into a batch source: a [N, d_in] tensor,
    an activation store (or the path of one), a pair (inputs, targets) of tensors or stores
    for a transcoder (or the path of a paired harvest), a live model stream, or any
    iterable of [*, d_in] tensors."""
    if isinstance(data, Tensor):
        return TensorSource(data)
    if isinstance(data, tuple) and len(data) == 2:  # (inputs, targets): a transcoder's pairs
        inputs, targets = (open_store(d) if isinstance(d, (str, Path)) else d for d in data)
        return PairedSource(inputs, targets)
    if isinstance(data, (str, Path)):
        return open_pairs(data) if is_paired_folder(data) else open_store(data)
    if isinstance(data, BatchSource):
        return data
    if isinstance(data, Iterable):
        return IterableSource(data)
    raise UsageError(
        f"cannot train on a {type(data).__name__}: pass a [tokens, d_in] tensor, an activation store "
        "(saekit.open_store(path) or its path), a pair (inputs, targets), a live activation stream, or an "
        "iterable of [batch, d_in] tensors."
    )


def open_data(path: str | Path, *, verify: bool = True):
    """The training data saved at ``path``: an activation store, or the paired stores of a
    harvest with --hook-out (a transcoder's inputs and targets)."""
    return open_pairs(path, verify=verify) if is_paired_folder(path) else open_store(path, verify=verify)


def hooks_of(source) -> tuple[str | None, str | None]:
    """(the hook point the data was read at, the target's for paired data)."""
    if isinstance(source, PairedSource):
        return source.hook, source.hook_out
    return getattr(source, "hook", None), None


def fingerprint_of(source) -> str | None:
    """What a batch source reads, in one string, where it can tell (None for a plain iterable)."""
    fingerprint = getattr(source, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def describe_nonfinite(source) -> str | None:
    """Where a source's first NaN or infinity is, where it can look (stores, tensors)."""
    locate = getattr(source, "first_nonfinite", None)
    return locate() if callable(locate) else None


def iterate_once(data, batch_size: int, max_tokens: int | None = None) -> Iterator[Tensor | Pair]:
    """Walk a finite source in order, once, up to max_tokens rows: [≤ batch_size, d_in]
    batches (Pairs, for paired data)."""
    source = as_source(data)
    if hasattr(source, "iterate_once"):
        chunks = source.iterate_once(batch_size)
    elif hasattr(source, "activations"):  # an activation store: its memory-mapped rows, in order
        rows = source.activations
        chunks = (torch.as_tensor(rows[i : i + batch_size]).float() for i in range(0, len(rows), batch_size))
    else:
        # Endless sources (live model streams): a fixed number of batches from seed 0.
        if max_tokens is None:
            raise UsageError("this data source is endless; give max_tokens to say how much of it to evaluate.")
        chunks = source.batches(batch_size, seed=0)
    seen = 0
    for chunk in chunks:
        rows = chunk.x.shape[0] if isinstance(chunk, Pair) else chunk.shape[0]
        if max_tokens is not None and seen + rows > max_tokens:
            keep = max_tokens - seen
            chunk = Pair(chunk.x[:keep], chunk.y[:keep]) if isinstance(chunk, Pair) else chunk[:keep]
            rows = keep
        if rows == 0:
            return
        yield chunk
        seen += rows
        if max_tokens is not None and seen >= max_tokens:
            return
