"""The shuffle buffer: random training batches from rows that are cheap to read in chunks.

Rows come in *chunks* — a few thousand consecutive rows of an activation store, or the
activations of a few contexts run through a live model. Each epoch:

    1. the chunks are put in a random order (seeded by (seed, epoch)),
    2. consecutive groups of ``window_chunks`` chunks form windows,
    3. the rows of each window are shuffled (seeded by (seed, epoch, window)), and
    4. the shuffled rows of all windows, one after the other, are cut into batches;
       the last partial batch of an epoch is dropped.

Only one window is in memory at a time, and it is read as ``window_chunks`` contiguous
runs, so a memory-mapped store larger than RAM streams with sequential-ish reads while
every batch mixes rows from ``window_chunks`` random places. Global batch i depends on
(seed, i, batch_size) and the chunking only — never on the number of ranks — and rank r
of W takes rows [r·b, (r+1)·b) of it (b = batch_size / W), so W ranks together see
exactly the batches of one. ``start`` skips whole windows without reading them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .._runtime.errors import UsageError

DEFAULT_CHUNK_BYTES = 2 << 20
"""Target size of one chunk of a store, in stored bytes."""
DEFAULT_WINDOW_CHUNKS = 32
"""Chunks shuffled together; memory held ≈ window_chunks × chunk bytes."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    if batch_size % world_size:
        raise UsageError(
            f"batch_size={batch_size} is not divisible by the {world_size} ranks; choose a multiple of {world_size}."
        )
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shuffled_batches(
    read_chunk: Callable[[int], Tensor],
    chunk_rows: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    window_chunks: int = DEFAULT_WINDOW_CHUNKS,
    read_window: Callable[[list[int]], Tensor] | None = None,
) -> Iterator[Tensor]:
    """Endless float32 batches [batch_size // world_size, d] (see the module docstring).

    ``read_chunk(c)`` returns chunk c's rows [chunk_rows[c], d] in any float dtype;
    ``read_window(chunks)``, if given, the rows of several chunks concatenated (a live
    stream under torch.distributed shares that work among the ranks).
    """
    mine = rank_slice(batch_size, rank, world_size)
    n_rows = sum(chunk_rows)
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise UsageError(f"batch_size={batch_size} is larger than the {n_rows} rows available; lower it or add data.")
    if window_chunks < 1:
        raise UsageError(f"window_chunks must be >= 1, got {window_chunks}.")
    sizes = torch.as_tensor(list(chunk_rows), dtype=torch.int64)
    epoch, within = divmod(start, per_epoch)
    while True:
        order = torch.randperm(len(sizes), generator=_generator(seed, epoch))
        windows = [order[w : w + window_chunks] for w in range(0, len(order), window_chunks)]
        ends = torch.cumsum(torch.stack([sizes[w].sum() for w in windows]), 0)
        skip = within * batch_size  # rows of this epoch already served
        first = int(torch.searchsorted(ends, skip, right=True))
        skip -= int(ends[first - 1]) if first > 0 else 0
        pending: list[Tensor] = []
        held = 0
        served = within
        for w in range(first, len(windows)):
            ids = [int(c) for c in windows[w]]
            rows = read_window(ids) if read_window is not None else torch.cat([read_chunk(c) for c in ids])
            rows = rows[torch.randperm(rows.shape[0], generator=_generator(seed, epoch, w))]
            if skip:
                rows, skip = rows[skip:], 0
            pending.append(rows)
            held += rows.shape[0]
            while held >= batch_size and served < per_epoch:
                joined = torch.cat(pending) if len(pending) > 1 else pending[0]
                batch, rest = joined[:batch_size], joined[batch_size:]
                pending, held = [rest], rest.shape[0]
                yield batch[mine].float()
                served += 1
            if served == per_epoch:
                break
        epoch, within = epoch + 1, 0


def chunk_boundaries(lengths: Sequence[int], chunk_rows: int) -> list[tuple[int, int, int]]:
    """Split runs of rows (e.g. shards) into chunks of at most ``chunk_rows`` that never
    cross a run: [(run, begin, end)] with begin/end row offsets inside the run."""
    chunks = []
    for run, length in enumerate(lengths):
        for begin in range(0, length, chunk_rows):
            chunks.append((run, begin, min(begin + chunk_rows, length)))
    return chunks
