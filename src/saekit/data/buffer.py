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

from .corpus import TokenizedCorpus
from .source import rank_slice

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
        raise ValueError(f"batch_size={batch_size} is larger than the {n_rows} rows available; lower it or add data.")
    if window_chunks < 1:
        raise ValueError(f"window_chunks must be >= 1, got {window_chunks}.")
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


def _process_group_enabled() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class LiveActivations:
    """A batch source that runs the model on the fly: no store on disk.

    Chunks are groups of ``contexts_per_chunk`` consecutive contexts of ``corpus``; their
    activations at ``hook`` (train-mask rows only) are computed when a window needs them,
    so the same (seed, batch index) gives the same batch as it would from a store
    harvested with the same chunking. Under torch.distributed (world_size > 1) each rank
    runs the model on every W-th chunk of a window and the ranks exchange the activations.
    """

    def __init__(
        self,
        loaded_model,
        corpus: TokenizedCorpus,
        hook: str,
        *,
        contexts_per_chunk: int = 8,
        window_chunks: int = DEFAULT_WINDOW_CHUNKS,
    ) -> None:
        from .model import resolve_hook

        self.loaded = loaded_model
        self.corpus = corpus
        self.hook = str(resolve_hook(loaded_model, hook))
        self.d_in = loaded_model.d_model
        self.contexts_per_chunk = contexts_per_chunk
        self.window_chunks = window_chunks
        per_context = corpus.train_mask.sum(dim=1)
        self._chunks = [(c, min(c + contexts_per_chunk, len(corpus))) for c in range(0, len(corpus), contexts_per_chunk)]
        self._chunk_rows = [int(per_context[a:b].sum()) for a, b in self._chunks]
        self.n_tokens = sum(self._chunk_rows)
        if self.n_tokens == 0:
            raise ValueError("the corpus has no tokens in its train mask; nothing to train on.")

    def __len__(self) -> int:
        return self.n_tokens

    def _read(self, chunk: int) -> Tensor:
        """[rows, d_in] activations of one chunk's train-mask tokens, in the model's dtype."""
        from .model import capture

        begin, end = self._chunks[chunk]
        mask = self.corpus.train_mask[begin:end]
        acts = capture(self.loaded, self.corpus.tokens[begin:end], [self.hook])[self.hook]
        return acts[mask.to(acts.device)]

    def batches(self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Tensor]:
        # Under a process group the ranks split each window's model work and exchange the
        # activations; without one (ranks simulated in one process) every rank computes
        # the whole window itself. The batches are the same either way.
        read_window = None
        if world_size > 1 and _process_group_enabled():
            from ..distributed import DistContext

            ctx = DistContext.current()
            if (ctx.rank, ctx.world_size) != (rank, world_size):
                raise ValueError(f"rank {rank} of {world_size} asked for, but the process group is rank {ctx.rank} of {ctx.world_size}.")

            def read_window(chunks: list[int]) -> Tensor:
                rows = [self._chunk_rows[c] for c in chunks]
                return torch.cat(ctx.share_work(self._read, chunks, rows, width=self.d_in, dtype=self.loaded.dtype,
                                                device=self.loaded.device))

        return shuffled_batches(
            self._read, self._chunk_rows, batch_size, seed=seed, start=start, rank=rank, world_size=world_size,
            window_chunks=self.window_chunks, read_window=read_window,
        )

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        """Every train-mask row once, in corpus order: float32 [≤ batch_size, d_in]."""
        for chunk in range(len(self._chunks)):
            rows = self._read(chunk).float()
            yield from rows.split(batch_size)
