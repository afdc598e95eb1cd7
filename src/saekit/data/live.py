"""A live model stream: a batch source that runs the model on the fly, no store on disk.

It yields the batches a store harvested with the same chunking would (data/shuffle.py),
so training from the stream and from the store follow the same trajectory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .._runtime.errors import UsageError
from .corpus import TokenizedCorpus
from .shuffle import DEFAULT_WINDOW_CHUNKS, shuffled_batches
from .store import STORE_DTYPES


def _process_group_enabled() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class LiveActivations:
    """A batch source that runs the model on the fly: no store on disk.

    Chunks are groups of ``contexts_per_chunk`` consecutive contexts of ``corpus``; their
    activations at ``hook`` (train-mask rows only) are computed when a window needs them,
    so the same (seed, batch index) gives the same batch as it would from a store
    harvested with the same chunking and ``dtype`` (rows are rounded to the store dtype, so a
    float32 model gives the same rows as its bfloat16 store). Under torch.distributed
    (world_size > 1) each rank runs the model on every W-th chunk of a window and the ranks
    exchange the activations.
    """

    def __init__(
        self,
        loaded_model,
        corpus: TokenizedCorpus,
        hook: str,
        *,
        contexts_per_chunk: int = 8,
        window_chunks: int = DEFAULT_WINDOW_CHUNKS,
        dtype: str = "bfloat16",
    ) -> None:
        from .model import resolve_hook

        if dtype not in STORE_DTYPES:
            raise UsageError(f"live activation dtype {dtype!r} is not supported; use one of {sorted(STORE_DTYPES)}.")
        self.dtype = dtype
        self._torch_dtype = STORE_DTYPES[dtype]
        self.loaded = loaded_model
        self.corpus = corpus
        self.hook = str(resolve_hook(loaded_model, hook))
        self.d_in = loaded_model.d_model
        self.contexts_per_chunk = contexts_per_chunk
        self.window_chunks = window_chunks
        per_context = corpus.train_mask.sum(dim=1)
        self._chunks = [
            (c, min(c + contexts_per_chunk, len(corpus))) for c in range(0, len(corpus), contexts_per_chunk)
        ]
        self._chunk_rows = [int(per_context[a:b].sum()) for a, b in self._chunks]
        self.n_tokens = sum(self._chunk_rows)
        if self.n_tokens == 0:
            raise UsageError("the corpus has no tokens in its train mask; nothing to train on.")

    def __len__(self) -> int:
        return self.n_tokens

    def fingerprint(self) -> str:
        parts = (
            self.loaded.name,
            self.loaded.fingerprint,
            self.hook,
            self.corpus.fingerprint,
            self.contexts_per_chunk,
            self.dtype,
        )
        return "live:" + ":".join(map(str, parts))

    def _read(self, chunk: int) -> Tensor:
        """[rows, d_in] activations of one chunk's train-mask tokens, in the model's dtype."""
        from .model import capture

        begin, end = self._chunks[chunk]
        mask = self.corpus.train_mask[begin:end]
        acts = capture(self.loaded, self.corpus.tokens[begin:end], [self.hook])[self.hook]
        return acts[mask.to(acts.device)]

    def _rows(self, chunk: int) -> Tensor:
        """One chunk's rows rounded to the store dtype, as a harvested store holds them."""
        return self._read(chunk).to(self._torch_dtype)

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Tensor]:
        # Under a process group the ranks split each window's model work and exchange the
        # activations; without one (ranks simulated in one process) every rank computes
        # the whole window itself. The batches are the same either way.
        read_window = None
        if world_size > 1 and _process_group_enabled():
            from .._runtime.distributed import DistContext

            ctx = DistContext.current()
            if (ctx.rank, ctx.world_size) != (rank, world_size):
                raise UsageError(
                    f"rank {rank} of {world_size} asked for, but the process group is rank {ctx.rank} "
                    f"of {ctx.world_size}."
                )

            def read_window(chunks: list[int]) -> Tensor:
                rows = [self._chunk_rows[c] for c in chunks]
                return torch.cat(
                    ctx.share_work(
                        self._rows, chunks, rows, width=self.d_in, dtype=self._torch_dtype, device=self.loaded.device
                    )
                )

        return shuffled_batches(
            self._rows,
            self._chunk_rows,
            batch_size,
            seed=seed,
            start=start,
            rank=rank,
            world_size=world_size,
            window_chunks=self.window_chunks,
            read_window=read_window,
        )

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        """Every train-mask row once, in corpus order: float32 [≤ batch_size, d_in]."""
        for chunk in range(len(self._chunks)):
            rows = self._rows(chunk).float()
            yield from rows.split(batch_size)
