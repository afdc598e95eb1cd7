"""Paired activations for transcoders: rows of an input hook point and of a target hook
point, aligned (row i of one is the same token as row i of the other).

    Pair(x, y)          a batch: x [B, d_in] what the transcoder reads, y [B, d_out] what it
                        predicts; an SAE's batches are Pair(x, x), y being x itself
    PairedSource        two aligned sources read together: two tensors, or two stores
                        harvested in one pass (``saekit harvest --hook A --hook-out B``
                        writes them into one folder, with ``pairs.json`` naming them)

A paired source shuffles the joined rows [x | y], so both sides always travel together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .._runtime.atomic import atomic_write_json
from .._runtime.errors import UsageError
from .shuffle import DEFAULT_WINDOW_CHUNKS, shuffled_batches
from .store import ActivationStore, StoreError, open_store

PAIRS_FILE = "pairs.json"


class Pair(NamedTuple):
    """A batch a transcoder reads (x) and predicts (y); for an SAE, y is x."""

    x: Tensor
    y: Tensor

    def to(self, device: torch.device | str) -> Pair:
        x = self.x.to(device, non_blocking=True)
        return Pair(x, x if self.y is self.x else self.y.to(device, non_blocking=True))

    @property
    def same(self) -> bool:
        """Whether the target is the input itself (an SAE's batch)."""
        return self.y is self.x


def as_pair(batch: Tensor | Pair | tuple) -> Pair:
    if isinstance(batch, Pair):
        return batch
    if isinstance(batch, tuple) and len(batch) == 2:
        return Pair(*batch)
    return Pair(batch, batch)


class PairedSource:
    """Aligned inputs and targets read together (see the module docstring)."""

    def __init__(
        self,
        inputs: Tensor | ActivationStore,
        targets: Tensor | ActivationStore,
        hooks: tuple[str | None, str | None] = (None, None),
    ) -> None:
        if len(inputs) != len(targets):
            raise UsageError(
                f"the inputs have {len(inputs)} rows but the targets {len(targets)}; a transcoder "
                "trains on aligned pairs, row i of one the same token as row i of the other."
            )
        if len(inputs) == 0:
            raise UsageError("the paired data is empty: it has no rows to train on.")
        self.inputs, self.targets = inputs, targets
        self.d_in, self.d_out = _width(inputs), _width(targets)
        self.hook, self.hook_out = hooks
        self.n_tokens = len(inputs)

    def __len__(self) -> int:
        return self.n_tokens

    def _split(self, rows: Tensor) -> Pair:
        return Pair(rows[:, : self.d_in], rows[:, self.d_in :])

    def _reader(self, side: Tensor | ActivationStore, chunk_rows: int):
        if isinstance(side, ActivationStore):
            return side.chunk_reader(chunk_rows)
        bounds = list(range(0, len(side), chunk_rows)) + [len(side)]
        return (lambda c: side[bounds[c] : bounds[c + 1]]), [b - a for a, b in zip(bounds, bounds[1:])]

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Pair]:
        chunk_rows = max(256, (2 << 20) // (4 * (self.d_in + self.d_out)))
        read_in, sizes = self._reader(self.inputs, chunk_rows)
        read_out, sizes_out = self._reader(self.targets, chunk_rows)
        if sizes != sizes_out:
            raise UsageError(
                "the input and target stores are cut into different shards; harvest them in one pass "
                "(saekit harvest --hook A --hook-out B)."
            )

        def read(c: int) -> Tensor:
            return torch.cat([read_in(c).float(), read_out(c).float()], dim=1)

        for rows in shuffled_batches(
            read,
            sizes,
            batch_size,
            seed=seed,
            start=start,
            rank=rank,
            world_size=world_size,
            window_chunks=DEFAULT_WINDOW_CHUNKS,
        ):
            yield self._split(rows)

    def iterate_once(self, batch_size: int) -> Iterator[Pair]:
        for begin in range(0, self.n_tokens, batch_size):
            x = self.inputs[begin : begin + batch_size]
            y = self.targets[begin : begin + batch_size]
            yield Pair(torch.as_tensor(x).float(), torch.as_tensor(y).float())

    def fingerprint(self) -> str:
        return "pairs:" + ":".join(_fingerprint(side) for side in (self.inputs, self.targets))

    def first_nonfinite(self) -> str | None:
        for name, side in (("input", self.inputs), ("target", self.targets)):
            where = side.first_nonfinite() if isinstance(side, ActivationStore) else _tensor_nonfinite(side)
            if where:
                return f"{name} {where}"
        return None


def _width(side) -> int:
    return side.d_in if isinstance(side, ActivationStore) else int(side.shape[1])


def _fingerprint(side) -> str:
    return side.fingerprint() if isinstance(side, ActivationStore) else tensor_fingerprint(side)


def tensor_fingerprint(t: Tensor) -> str:
    """A tensor's shape and dtype with a hash of 4,096 of its rows, evenly spaced (the whole
    tensor could be gigabytes)."""
    from .._runtime.checksums import sha256_bytes

    rows = t[:: max(1, t.shape[0] // 4096)].detach().float().cpu().contiguous()
    return f"tensor{list(t.shape)}:{t.dtype}:" + sha256_bytes(rows.numpy().tobytes())


def _tensor_nonfinite(t: Tensor) -> str | None:
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    row, column = (int(i) for i in bad.nonzero()[0])
    return f"row {row}, column {column}: {float(t[row, column])}"


def check_fits(source, sae) -> None:
    """Raise unless ``source`` is the data ``sae`` trains on: an SAE reads rows of its
    width, a transcoder pairs of its input and target widths."""
    paired = isinstance(source, PairedSource)
    if source.d_in != sae.d_in:
        raise UsageError(
            f"the data has d_in={source.d_in} but the SAE was made for d_in={sae.d_in}; create the SAE "
            f"with d_in={source.d_in} or train it on activations of width {sae.d_in}."
        )
    if sae.cfg.transcoder and not paired:
        raise UsageError(
            "a transcoder trains on pairs (inputs, targets): pass (X, Y), or a folder harvested with "
            "--hook A --hook-out B."
        )
    if paired and not sae.cfg.transcoder:
        raise UsageError(
            "these are (input, target) pairs, which a transcoder trains on: create it with "
            'transcoder=True (or "skip"), or train the SAE on one side.'
        )
    if paired and source.d_out != sae.d_out:
        raise UsageError(f"the targets have width {source.d_out} but the transcoder predicts d_out={sae.d_out}.")


# ---- a folder of two stores harvested together --------------------------------------------------
def is_paired_folder(path: Path) -> bool:
    return (Path(path) / PAIRS_FILE).is_file()


def write_pairs_file(folder: Path, input_hook: str, target_hook: str) -> None:
    atomic_write_json(
        Path(folder) / PAIRS_FILE,
        {"format": "saekit-paired-stores", "version": 1, "input": input_hook, "target": target_hook},
    )


def open_pairs(path: str | Path, *, verify: bool = True) -> PairedSource:
    """The paired stores of a folder ``saekit harvest --hook A --hook-out B`` made."""
    path = Path(path)
    try:
        record = json.loads((path / PAIRS_FILE).read_text())
        input_hook, target_hook = str(record["input"]), str(record["target"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path / PAIRS_FILE} is unreadable ({error}); harvest the pairs again.") from None
    for hook in (input_hook, target_hook):
        if "/" in hook or hook.startswith(".") or not (path / hook).is_dir():
            raise StoreError(f"{path / PAIRS_FILE} names a store {hook!r} that is not in {path}.")
    inputs, targets = open_store(path / input_hook, verify=verify), open_store(path / target_hook, verify=verify)
    same_corpus = inputs.manifest.get("corpus_fingerprint") == targets.manifest.get("corpus_fingerprint")
    same_rows = [s["rows"] for s in inputs.manifest["shards"]] == [s["rows"] for s in targets.manifest["shards"]]
    if not (same_corpus and same_rows):
        raise StoreError(
            f"the stores in {path} were not harvested together (other corpus or shards); harvest "
            "both hook points in one pass: saekit harvest --hook A --hook-out B."
        )
    return PairedSource(inputs, targets, (input_hook, target_hook))
