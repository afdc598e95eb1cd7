"""Several SAEs in one run: one per hook point of a model, or a sweep of sizes and
sparsities on the same activations, spread over the ranks of a ``torchrun`` job.

Each SAE is trained whole by one rank — SAE i by rank i mod W — exactly as ``train``
would train it alone in one process (same data, same steps, same result); the ranks
exchange nothing while they train, so W ranks finish W SAEs in the time of one. A
rank steps its own SAEs in lockstep, one step each in turn, so SAEs that read live
activations of one model through a ``SharedModelPass`` share its forward passes:
the model runs once per chunk of contexts for all their hook points.

    shared = SharedModelPass(loaded, corpus, ["layers.3.resid_post", "layers.6.resid_post"])
    runs = [Run(hook, create("topk", d_in=loaded.d_model, d_sae=4096, k=32), shared.source(hook))
            for hook in shared.hooks]
    results = multi_train(runs, out="runs/two-hooks", steps=10_000, batch_size=4096)

    runs = grid("topk", d_in=768, d_sae=[8192, 32768], k=[32, 64])     # a sweep, 4 SAEs
    results = multi_train(runs, data=open_store("store"), out="runs/sweep")
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .._runtime.distributed import DistContext
from .._runtime.errors import UsageError
from ..data.live import LiveActivations
from ..data.shuffle import DEFAULT_WINDOW_CHUNKS
from ..sae.base import SparseAutoencoder
from .config import TrainConfig
from .trainer import Trainer, TrainResult, training_folder


@dataclass
class Run:
    """One SAE to train, and how."""

    name: str
    """Its folder under multi_train's ``out`` (checkpoint/, train_log.jsonl, sae/) and its key in the results."""
    sae: SparseAutoencoder
    """The untrained SAE (every rank builds the whole list alike, e.g. with fixed seeds)."""
    data: Any = None
    """What ``train`` takes: tensor, store, live source, iterable; None: multi_train's ``data``."""
    options: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields for this SAE alone, over those given to multi_train."""


def grid(arch: str, *, d_in: int, seed: int = 0, **axes: Any) -> list[Run]:
    """One Run per combination of the list-valued arguments; the others are fixed.

    Arguments that are TrainConfig fields (lr, steps, ...) go to the run's options, the
    rest to ``create`` (d_sae, k, target_l0, ...). ``grid("topk", d_in=768,
    d_sae=[8192, 32768], k=[32, 64])`` gives 4 runs named "topk-d_sae_8192-k_32", ...
    """
    from ..sae.registry import create

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    swept = {name: list(values) for name, values in axes.items() if isinstance(values, (list, tuple))}
    fixed = {name: value for name, value in axes.items() if name not in swept}
    if any(len(values) == 0 for values in swept.values()):
        raise UsageError(f"a swept argument has no values: {swept}.")
    runs = []
    for combination in itertools.product(*swept.values()):
        chosen = {**fixed, **dict(zip(swept, combination))}
        name = "-".join(
            [
                arch,
                *(
                    f"{key}_{value:g}" if isinstance(value, float) else f"{key}_{value}"
                    for key, value in zip(swept, combination)
                ),
            ]
        )
        sae_options = {k: v for k, v in chosen.items() if k not in train_fields}
        if "d_sae" not in sae_options:
            raise UsageError("grid needs d_sae (a number, or a list of them to sweep).")
        runs.append(
            Run(
                name,
                create(arch, d_in=d_in, seed=seed, **sae_options),
                options={k: v for k, v in chosen.items() if k in train_fields},
            )
        )
    return runs


def assigned_rank(index: int, world_size: int) -> int:
    """The rank that trains run ``index``: round-robin."""
    return index % world_size


def multi_train(
    runs: Sequence[Run],
    data: Any = None,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    **options: Any,
) -> dict[str, TrainResult]:
    """Train every run's SAE, each on one rank (see the module docstring); return this
    rank's results, {name: TrainResult}.

    Every rank passes the same list. options: TrainConfig fields shared by all runs (a
    run's own ``options`` win). With ``out``, run r writes out/<r.name>/ (checkpoints, log,
    and the final SAE in sae/) and resumes from it; when the call returns on any rank,
    every SAE is saved there.
    """
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"run names must be unique, got {names}.")
    if any(not name or "/" in name or name.startswith(".") for name in names):
        raise UsageError(f"run names become folder names: no '/', no leading '.', not empty; got {names}.")
    if any(run.data is None for run in runs) and data is None:
        raise UsageError("a run has no data: give multi_train's data, or each Run's data.")
    ctx = DistContext.current()
    ctx.agree(len(runs), "the number of SAEs to train")
    out = Path(out) if out is not None else None
    mine = [run for index, run in enumerate(runs) if assigned_rank(index, ctx.world_size) == ctx.rank]

    show_progress = options.get("progress", True) and ctx.is_main
    trainers: list[Trainer] = []
    try:
        for run in mine:
            trainers.append(
                Trainer(
                    run.sae,
                    run.data if run.data is not None else data,
                    out=out / run.name if out is not None else None,
                    resume=resume,
                    ctx=DistContext(),
                    **{**options, **run.options, "progress": False},
                )
            )
    except BaseException:
        for trainer in trainers:
            trainer.close()
        raise
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(t.cfg.steps for t in trainers),
            initial=sum(t.step_index for t in trainers),
            desc=f"train {len(trainers)} of {len(runs)} SAEs",
            unit="step",
            dynamic_ncols=True,
        )
    results = {}
    try:
        streams = [trainer.batches() for trainer in trainers]
        while not all(trainer.done for trainer in trainers):
            for trainer, stream in zip(trainers, streams):
                if not trainer.done:
                    trainer.step(next(stream))
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        for run, trainer in zip(mine, trainers):
            results[run.name] = result = trainer.finish()
            if out is not None:
                _save_into(trainer, result.sae)
    finally:
        for trainer in trainers:
            trainer.close()
    ctx.barrier()  # every SAE is on disk before any rank moves on
    return results


def _save_into(trainer: Trainer, sae: SparseAutoencoder) -> None:
    """Save a finished run's SAE as sae/ in its folder, recorded there as saekit's."""
    with training_folder(trainer.out, trainer.identity_at_start, ("sae",)) as folder:
        sae.save(folder.output("sae"), overwrite=folder.has("sae"))
        folder.finished("sae")


class SharedModelPass:
    """Live activations at several hook points of one model, one forward pass per chunk.

    ``source(hook)`` is a batch source that gives exactly the batches of
    ``LiveActivations(loaded, corpus, hook)`` with the same chunking and dtype. A chunk computed
    for one source is kept, at every hook, until each source made for that hook has read
    it (and at most ``window_chunks`` chunks are kept), so sources read in lockstep with
    the same seed and batch size — a rank's runs in multi_train — run the model once per
    chunk. Sources that read in other orders recompute what they miss: correct, slower.
    """

    def __init__(
        self,
        loaded,
        corpus,
        hooks: Sequence[str],
        *,
        contexts_per_chunk: int = 8,
        window_chunks: int | None = None,
        dtype: str = "bfloat16",
    ) -> None:
        from ..data.model import resolve_hook

        self.loaded, self.corpus = loaded, corpus
        self.hooks = [str(resolve_hook(loaded, hook)) for hook in hooks]
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise UsageError(f"SharedModelPass needs distinct hook points, got {list(hooks)}.")
        self.contexts_per_chunk = contexts_per_chunk
        self.window_chunks = window_chunks or DEFAULT_WINDOW_CHUNKS
        self.dtype = dtype
        self.forward_passes = 0
        """Chunks the model has run on (a measure of the sharing)."""
        self._readers = dict.fromkeys(self.hooks, 0)
        self._kept: OrderedDict[int, dict[str, list]] = OrderedDict()  # chunk -> {hook: [tensor, reads left]}

    def source(self, hook: str):
        """A batch source for ``hook`` (one of ``hooks``); make one per SAE that reads it."""
        from ..data.model import resolve_hook

        name = str(resolve_hook(self.loaded, hook))
        if name not in self._readers:
            raise UsageError(f"{hook} is not one of this SharedModelPass's hook points {self.hooks}.")
        self._readers[name] += 1
        return _SharedHook(self, name)

    def read(self, chunk: int, bounds: tuple[int, int], hook: str) -> Tensor:
        """Train-mask activations [rows, d_model] of contexts bounds[0]:bounds[1] (chunk ``chunk``) at ``hook``."""
        entry = self._kept.get(chunk)
        if entry is None or hook not in entry:
            from ..data.model import capture

            begin, end = bounds
            acts = capture(self.loaded, self.corpus.tokens[begin:end], self.hooks)
            mask = self.corpus.train_mask[begin:end]
            self.forward_passes += 1
            fresh = {h: [acts[h][mask.to(acts[h].device)], self._readers[h]] for h in self.hooks}
            if entry is None:
                entry = self._kept[chunk] = fresh
            else:  # this hook was used up; the others keep their pending reads
                entry[hook] = fresh[hook]
            while len(self._kept) > self.window_chunks:
                self._kept.popitem(last=False)
        value = entry[hook][0]
        entry[hook][1] -= 1
        if entry[hook][1] <= 0:
            del entry[hook]
            if not entry:
                del self._kept[chunk]
        return value


class _SharedHook(LiveActivations):
    """LiveActivations at one hook whose chunks come from a SharedModelPass."""

    def __init__(self, shared: SharedModelPass, hook: str) -> None:
        super().__init__(
            shared.loaded,
            shared.corpus,
            hook,
            contexts_per_chunk=shared.contexts_per_chunk,
            window_chunks=shared.window_chunks,
            dtype=shared.dtype,
        )
        self._shared = shared

    def _read(self, chunk: int) -> Tensor:
        return self._shared.read(chunk, self._chunks[chunk], self.hook)
