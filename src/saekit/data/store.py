"""The activation store: activations on disk, sharded, checksummed, read memory-mapped.

A store is a folder:

    manifest.json        what was harvested (model, hook, dtype, d_in, context size,
                         tokenizer, corpus fingerprint, token count) and every shard's
                         row count and sha256 checksums
    shard-00000.act      activations: [rows, d_in] raw little-endian bfloat16 or float32
    shard-00000.tok      per row, int32 [rows, 3]: token id, document id, position in context
    shard-00001.act …

Only tokens in the corpus's train mask are stored (special tokens, when excluded, and
padding never are), so every row is a training row. Rows are in corpus order: context by
context, position by position. Raw files, not pickle: ``np.memmap`` reads them without
loading them whole, and any language can read them from the manifest alone.

Writers (``StoreWriter``) add one shard at a time, each written atomically and then
recorded in the manifest (also atomically), so an interrupted harvest leaves a valid
prefix of shards that a rerun verifies and continues from.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_path, atomic_write_json
from .buffer import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW_CHUNKS, chunk_boundaries, shuffled_batches

FORMAT = "saekit-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
META_COLUMNS = ("token_id", "doc_id", "position")
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY_OF = {"bfloat16": np.dtype("<i2"), "float32": np.dtype("<f4")}  # bf16 travels as its 16 bits
_META_DTYPE = np.dtype("<i4")


class StoreError(ValueError):
    """An activation store is missing, incomplete, corrupted, or does not match its use."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _sha256_of(data: np.ndarray | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as file:
            while block := file.read(1 << 22):
                digest.update(block)
    else:
        digest.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    return digest.hexdigest()


# ---- reading ------------------------------------------------------------------------------


def open_store(path: str | Path, *, verify: bool = False) -> ActivationStore:
    """Open a finished store. Cheap checks (manifest, shard files present with the right
    sizes) always run; ``verify=True`` also checks every shard's sha256 (reads it all)."""
    store = ActivationStore(Path(path))
    if verify:
        store.verify()
    return store


class _Rows:
    """Memory-mapped rows of one kind (activations or metadata), across shards, indexable
    like a tensor: ``rows[i]``, ``rows[a:b]``, ``rows[index_tensor]`` → a new CPU tensor."""

    def __init__(self, store: ActivationStore, kind: str, column: int | None = None) -> None:
        self._store, self._kind, self._column = store, kind, column

    def __len__(self) -> int:
        return self._store.n_tokens

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) if self._column is not None else (len(self), self._store.d_in)

    def _convert(self, array: np.ndarray) -> Tensor:
        if self._kind == "tok":
            return torch.from_numpy(array[..., self._column].astype(np.int64))
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if self._store.dtype == torch.bfloat16 else tensor

    def __getitem__(self, key: int | slice | Tensor | np.ndarray | list) -> Tensor:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            index = int(key) + n if key < 0 else int(key)
            if not 0 <= index < n:
                raise IndexError(f"row {key} is out of range for a store of {n} rows.")
            return self[index : index + 1][0]
        if isinstance(key, slice):
            begin, end, step = key.indices(n)
            if step != 1:
                return self[torch.arange(begin, end, step)]
            return self._convert(self._store._read_range(self._kind, begin, end))
        index = torch.as_tensor(key, dtype=torch.int64).reshape(-1).numpy()
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row indices out of range for a store of {n} rows.")
        return self._convert(self._store._read_rows(self._kind, np.where(index < 0, index + n, index)))


class ActivationStore:
    """A finished activation store (see the module docstring); a batch source for training."""

    def __init__(self, path: Path) -> None:
        self.path = path
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            what = "does not exist" if not path.exists() else "has no manifest.json"
            raise StoreError(f"{path} {what}: it is not an activation store. Make one with `saekit harvest`.")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise StoreError(f"{manifest_path} is not valid JSON ({error}); the store is damaged, harvest it again.") from None
        m = self.manifest
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise StoreError(
                f"{manifest_path} is not a version-{VERSION} saekit activation store "
                f"(format {m.get('format')!r}, version {m.get('version')!r})."
            )
        if not m.get("complete"):
            raise StoreError(
                f"the harvest into {path} did not finish ({len(m['shards'])} of {m.get('n_shards', '?')} shards). "
                "Run the same `saekit harvest` command again to resume it."
            )
        if m["dtype"] not in STORE_DTYPES:
            raise StoreError(f"{manifest_path} names dtype {m['dtype']!r}; stores hold {sorted(STORE_DTYPES)}.")
        self.d_in: int = int(m["d_in"])
        self.n_tokens: int = int(m["n_tokens"])
        self.dtype: torch.dtype = STORE_DTYPES[m["dtype"]]
        self.hook: str = m["hook"]
        self._np_dtype = _NUMPY_OF[m["dtype"]]
        self._shard_rows = [int(s["rows"]) for s in m["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(self._shard_rows, dtype=np.int64)])
        if int(self._offsets[-1]) != self.n_tokens:
            raise StoreError(
                f"the manifest of {path} says {self.n_tokens} tokens but its shards hold {int(self._offsets[-1])} rows; "
                "the manifest does not match its shards. Harvest the store again."
            )
        for shard in m["shards"]:
            for kind, row_bytes in (("act", self.d_in * self._np_dtype.itemsize), ("tok", len(META_COLUMNS) * 4)):
                file = path / f"{shard['name']}.{kind}"
                expected = int(shard["rows"]) * row_bytes
                if not file.is_file():
                    raise StoreError(f"shard file {file} is missing. Harvest the store again.")
                if file.stat().st_size != expected:
                    raise StoreError(
                        f"shard file {file} has {file.stat().st_size} bytes but the manifest implies {expected} "
                        f"({shard['rows']} rows); it is truncated or does not belong to this manifest. Harvest the store again."
                    )
        self.activations = _Rows(self, "act")
        """[n_tokens, d_in] rows in the stored dtype, memory-mapped."""
        self.token_ids = _Rows(self, "tok", 0)
        self.doc_ids = _Rows(self, "tok", 1)
        self.positions = _Rows(self, "tok", 2)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, hook={self.hook!r}, n_tokens={self.n_tokens}, d_in={self.d_in}, dtype={self.manifest['dtype']})"

    # -- memory maps: each read maps just the rows it needs and drops the map afterwards,
    # so the address space used stays at the size of one read whatever the store's size.
    def _map(self, shard: int, kind: str, begin: int, end: int) -> np.memmap:
        """Rows [begin, end) of one shard's file, memory-mapped read-only."""
        name = self.manifest["shards"][shard]["name"]
        if kind == "act":
            dtype, width = self._np_dtype, self.d_in
        else:
            dtype, width = _META_DTYPE, len(META_COLUMNS)
        return np.memmap(self.path / f"{name}.{kind}", dtype=dtype, mode="r", offset=begin * width * dtype.itemsize,
                         shape=(end - begin, width))

    def _empty(self, kind: str, rows: int) -> np.ndarray:
        if kind == "act":
            return np.empty((rows, self.d_in), dtype=self._np_dtype)
        return np.empty((rows, len(META_COLUMNS)), dtype=_META_DTYPE)

    def _read_range(self, kind: str, begin: int, end: int) -> np.ndarray:
        """Rows [begin, end) copied out of the shards."""
        out = self._empty(kind, max(end - begin, 0))
        row = begin
        while row < end:
            shard = int(np.searchsorted(self._offsets, row, side="right")) - 1
            stop = min(end, int(self._offsets[shard + 1]))
            base = int(self._offsets[shard])
            out[row - begin : stop - begin] = self._map(shard, kind, row - base, stop - base)
            row = stop
        return out

    def _read_rows(self, kind: str, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` (any order, repeats allowed) copied out of the shards."""
        out = self._empty(kind, len(index))
        shards = np.searchsorted(self._offsets, index, side="right") - 1
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            local = index[where] - self._offsets[shard]
            low = int(local.min())
            out[where] = self._map(int(shard), kind, low, int(local.max()) + 1)[local - low]
        return out

    # -- checks
    def verify(self) -> None:
        """Recompute every shard file's sha256 and compare with the manifest."""
        bad = []
        for shard in self.manifest["shards"]:
            for kind in ("act", "tok"):
                if _sha256_of(self.path / f"{shard['name']}.{kind}") != shard["sha256"][kind]:
                    bad.append(f"{shard['name']}.{kind}")
        if bad:
            raise StoreError(
                f"the store at {self.path} is corrupted: {', '.join(bad)} fail(s) the sha256 checksum in the manifest. "
                "Harvest the store again (saekit harvest ... --overwrite)."
            )

    def check_d_in(self, d_in: int) -> None:
        """Raise if an SAE of width ``d_in`` cannot train on this store."""
        if d_in != self.d_in:
            raise StoreError(
                f"the SAE reads d_in={d_in} but the store at {self.path} holds {self.hook} activations of "
                f"{self.manifest['model']} with d_in={self.d_in}; create the SAE with d_in={self.d_in}."
            )

    # -- batch source
    def chunks(self, chunk_rows: int | None = None) -> list[tuple[int, int, int]]:
        """The store cut into chunks of contiguous rows within shards: [(shard, begin, end)]."""
        if chunk_rows is None:
            chunk_rows = max(256, DEFAULT_CHUNK_BYTES // (self.d_in * self._np_dtype.itemsize))
        return chunk_boundaries(self._shard_rows, chunk_rows)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk_rows: int | None = None,
        window_chunks: int = DEFAULT_WINDOW_CHUNKS,
    ) -> Iterator[Tensor]:
        """Endless shuffled float32 batches [batch_size // world_size, d_in] (see data/buffer.py)."""
        chunks = self.chunks(chunk_rows)

        def read_chunk(c: int) -> Tensor:
            shard, begin, end = chunks[c]
            base = int(self._offsets[shard])
            return self.activations[base + begin : base + end]

        return shuffled_batches(
            read_chunk, [end - begin for _, begin, end in chunks], batch_size, seed=seed, start=start, rank=rank,
            world_size=world_size, window_chunks=window_chunks,
        )

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        """Every row once, in store order: float32 [≤ batch_size, d_in]."""
        for begin in range(0, self.n_tokens, batch_size):
            yield self.activations[begin : begin + batch_size].float()


# ---- writing ------------------------------------------------------------------------------

IDENTITY_KEYS = ("model", "hook", "dtype", "d_in", "context_size", "corpus_fingerprint", "n_tokens", "shard_contexts", "n_shards")
"""Manifest fields that must match for a rerun to resume an unfinished store."""


def write_shard_files(
    path: Path, index: int, activations: Tensor, meta: np.ndarray, contexts: tuple[int, int], *, dtype: str, d_in: int
) -> dict[str, Any]:
    """Write shard ``index``'s two files into the store folder ``path`` (each atomically)
    and return its manifest record, leaving the manifest alone: ``StoreWriter`` records
    it, or, when ranks write shards in parallel, rank 0 does at the end."""
    if activations.ndim != 2 or activations.shape[1] != d_in:
        raise ValueError(f"activations must be [rows, {d_in}], got {tuple(activations.shape)}.")
    if meta.shape != (activations.shape[0], len(META_COLUMNS)):
        raise ValueError(f"meta must be [{activations.shape[0]}, {len(META_COLUMNS)}], got {meta.shape}.")
    acts = activations.detach().to("cpu", STORE_DTYPES[dtype]).contiguous()
    acts_np = acts.view(torch.int16).numpy() if acts.dtype == torch.bfloat16 else acts.numpy()
    meta = np.ascontiguousarray(meta, dtype=_META_DTYPE)
    name = shard_name(index)
    checksums = {}
    for kind, array in (("act", acts_np), ("tok", meta)):
        with atomic_path(Path(path) / f"{name}.{kind}") as tmp:
            array.tofile(tmp)
        checksums[kind] = _sha256_of(array)
    return {"index": index, "name": name, "rows": int(acts.shape[0]), "contexts": list(contexts), "sha256": checksums}


class StoreWriter:
    """Writes a store shard by shard; resumes an unfinished store with the same identity.

    ``header`` holds the manifest's descriptive fields, including every key of
    ``IDENTITY_KEYS``. Opening a folder that holds a *finished* store raises unless
    ``overwrite``; an unfinished one with the same identity is resumed (its shards are
    verified; the first bad one and everything after it is redone), and one with another
    identity raises unless ``overwrite``.
    """

    def __init__(self, path: str | Path, header: dict[str, Any], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        missing = [k for k in IDENTITY_KEYS if k not in header]
        if missing:
            raise ValueError(f"a store header needs {missing}.")
        if header["dtype"] not in STORE_DTYPES:
            raise ValueError(f"store dtype {header['dtype']!r} is not supported; use one of {sorted(STORE_DTYPES)}.")
        self.manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "complete": False, **header, "shards": []}
        manifest_path = self.path / MANIFEST
        if manifest_path.is_file():
            old = self._read_old_manifest(manifest_path)
            differs = [k for k in IDENTITY_KEYS if old.get(k) != header[k]]
            if overwrite:
                shutil.rmtree(self.path)
            elif old.get("complete"):
                raise FileExistsError(
                    f"{self.path} already holds a finished activation store; pass overwrite=True (CLI: --overwrite) "
                    "to replace it, or choose another output folder."
                )
            elif differs:
                raise FileExistsError(
                    f"{self.path} holds an unfinished harvest with a different {', '.join(differs)}, so it cannot be "
                    "resumed; pass overwrite=True (CLI: --overwrite) to start over, or choose another output folder."
                )
            else:
                self.manifest["shards"] = self._valid_prefix(old["shards"])
        elif self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(
                f"{self.path} exists and is not an activation store; choose an empty or new output folder."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._save_manifest()

    @staticmethod
    def _read_old_manifest(path: Path) -> dict[str, Any]:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("format") != FORMAT:
            raise FileExistsError(f"{path} is not a saekit activation store manifest; choose another output folder.")
        return old

    def _valid_prefix(self, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for index, shard in enumerate(shards):
            files = {kind: self.path / f"{shard['name']}.{kind}" for kind in ("act", "tok")}
            if shard.get("index") != index or not all(
                f.is_file() and _sha256_of(f) == shard["sha256"][kind] for kind, f in files.items()
            ):
                break
            kept.append(shard)
        return kept

    @property
    def done_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def write_shard(self, index: int, activations: Tensor, meta: np.ndarray, contexts: tuple[int, int]) -> None:
        """Write shard ``index`` (must be the next one): ``activations`` [rows, d_in] in the
        store dtype (cast if not), ``meta`` int32 [rows, 3] (token id, doc id, position)."""
        if index != self.done_shards:
            raise ValueError(f"shard {index} written out of order; the next shard is {self.done_shards}.")
        record = write_shard_files(self.path, index, activations, meta, contexts, dtype=self.manifest["dtype"],
                                   d_in=self.manifest["d_in"])
        self.manifest["shards"].append(record)
        self._save_manifest()

    def add_written_shards(self, records: list[dict[str, Any]]) -> None:
        """Record shards that ``write_shard_files`` wrote (e.g. on other ranks); with the
        shards already recorded they must make a prefix 0, 1, 2, ... of the store."""
        for record in sorted(records, key=lambda r: r["index"]):
            if record["index"] != self.done_shards:
                raise ValueError(f"shard {record['index']} cannot be recorded; the next shard is {self.done_shards}.")
            self.manifest["shards"].append(record)
        self._save_manifest()

    def finish(self) -> ActivationStore:
        """Mark the store complete (after the last shard) and open it."""
        rows = sum(s["rows"] for s in self.manifest["shards"])
        if self.done_shards != self.manifest["n_shards"] or rows != self.manifest["n_tokens"]:
            raise ValueError(
                f"cannot finish {self.path}: {self.done_shards}/{self.manifest['n_shards']} shards and "
                f"{rows}/{self.manifest['n_tokens']} rows written."
            )
        self.manifest["complete"] = True
        self._save_manifest()
        return open_store(self.path)

    def _save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)
