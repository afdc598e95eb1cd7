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

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._runtime.atomic import atomic_path, atomic_write_json
from .._runtime.checksums import sha256_bytes, sha256_file, sha256_files
from .._runtime.errors import DataError, NonFiniteError, UsageError
from .._runtime.folder import OutputFolder
from .shuffle import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW_CHUNKS, chunk_boundaries, shuffled_batches

FORMAT = "saekit-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
META_COLUMNS = ("token_id", "doc_id", "position")
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY_OF = {"bfloat16": np.dtype("<i2"), "float32": np.dtype("<f4")}  # bf16 travels as its 16 bits
_META_DTYPE = np.dtype("<i4")


class StoreError(DataError):
    """An activation store is missing, incomplete, corrupted, or does not match its use."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _sha256_of(data: np.ndarray | Path) -> str:
    if isinstance(data, Path):
        return sha256_file(data)
    return sha256_bytes(memoryview(np.ascontiguousarray(data)).cast("B"))


# ---- reading ------------------------------------------------------------------------------


def open_store(path: str | Path, *, verify: bool = True) -> ActivationStore:
    """Open a finished store and check it: the manifest's fields and shard names, and the
    shard files' sizes always; with ``verify`` (the default) also every shard's sha256, in
    one streaming pass (about 1 GB/s per core; benchmarks/store_verify.py). Pass
    ``verify=False`` to skip the checksums of a store known to be intact."""
    store = ActivationStore(Path(path))
    if verify:
        store.verify()
    return store


MAX_MANIFEST_BYTES = 64 << 20
"""A manifest holds a few hundred bytes per shard; anything larger is not one."""
_SHARD_NAME = re.compile(r"shard-\d{5,}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(m: dict[str, Any], where: Path) -> None:
    """Types, ranges and shard names of a manifest, before any number in it is used."""

    def bad(what: str) -> StoreError:
        return StoreError(
            f"{where}: {what}; the manifest is damaged or was not written by saekit. Harvest the store again."
        )

    if m.get("dtype") not in STORE_DTYPES:
        raise bad(f"dtype is {m.get('dtype')!r}, not one of {sorted(STORE_DTYPES)}")
    for key in ("d_in", "n_tokens"):
        value = m.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "d_in" else 0):
            raise bad(f"{key} is {value!r}, not a {'positive' if key == 'd_in' else 'non-negative'} integer")
    if not isinstance(m.get("hook"), str):
        raise bad(f"hook is {m.get('hook')!r}, not a hook-point name")
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise bad("it has no list of shards")
    for index, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise bad(f"shard {index} is not a record")
        name = shard.get("name")
        if name != shard_name(index) or not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
            raise bad(
                f"shard {index} is named {name!r}, not {shard_name(index)!r} (shard files must lie inside the store)"
            )
        rows, sums = shard.get("rows"), shard.get("sha256")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise bad(f"shard {name} has {rows!r} rows")
        if not isinstance(sums, dict) or not all(
            isinstance(sums.get(k), str) and _HEX64.fullmatch(sums[k]) for k in ("act", "tok")
        ):
            raise bad(f"shard {name} has no sha256 checksums")


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
        return self._store._as_tensor(array)

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
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise StoreError(
                f"{manifest_path} is {manifest_path.stat().st_size:,} bytes, more than any store's "
                "manifest; it is not a saekit manifest. Harvest the store again."
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StoreError(
                f"{manifest_path} is not valid JSON ({error}); the store is damaged, harvest it again."
            ) from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
            got = (m.get("format"), m.get("version")) if isinstance(m, dict) else (type(m).__name__, None)
            raise StoreError(
                f"{manifest_path} is not a version-{VERSION} saekit activation store "
                f"(format {got[0]!r}, version {got[1]!r})."
            )
        _check_manifest(m, manifest_path)
        if not m.get("complete"):
            raise StoreError(
                f"the harvest into {path} did not finish ({len(m['shards'])} of {m.get('n_shards', '?')} shards). "
                "Run the same `saekit harvest` command again to resume it."
            )
        self.d_in: int = int(m["d_in"])
        self.n_tokens: int = int(m["n_tokens"])
        self.dtype: torch.dtype = STORE_DTYPES[m["dtype"]]
        self.hook: str = m["hook"]
        self._np_dtype = _NUMPY_OF[m["dtype"]]
        self._shard_rows = [int(s["rows"]) for s in m["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(self._shard_rows, dtype=np.int64)])
        if int(self._offsets[-1]) != self.n_tokens:
            raise StoreError(
                f"the manifest of {path} says {self.n_tokens} tokens but its shards hold "
                f"{int(self._offsets[-1])} rows; "
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
                        f"({shard['rows']} rows); it is truncated or does not belong to this manifest. "
                        "Harvest the store again."
                    )
        self.activations = _Rows(self, "act")
        """[n_tokens, d_in] rows in the stored dtype, memory-mapped."""
        self.token_ids = _Rows(self, "tok", 0)
        self.doc_ids = _Rows(self, "tok", 1)
        self.positions = _Rows(self, "tok", 2)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, hook={self.hook!r}, n_tokens={self.n_tokens}, d_in={self.d_in}, "
            f"dtype={self.manifest['dtype']})"
        )

    # -- memory maps: each read maps just the rows it needs and drops the map afterwards,
    # so the address space used stays at the size of one read whatever the store's size.
    def _map(self, shard: int, kind: str, begin: int, end: int) -> np.memmap:
        """Rows [begin, end) of one shard's file, memory-mapped read-only."""
        name = self.manifest["shards"][shard]["name"]
        if kind == "act":
            dtype, width = self._np_dtype, self.d_in
        else:
            dtype, width = _META_DTYPE, len(META_COLUMNS)
        return np.memmap(
            self.path / f"{name}.{kind}",
            dtype=dtype,
            mode="r",
            offset=begin * width * dtype.itemsize,
            shape=(end - begin, width),
        )

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
        """Recompute every shard file's sha256 (streamed, in parallel) and compare with the
        manifest; raise naming every file that fails."""
        files = {
            self.path / f"{s['name']}.{kind}": s["sha256"][kind]
            for s in self.manifest["shards"]
            for kind in ("act", "tok")
        }
        actual = sha256_files(files)
        bad = [path.name for path, expected in files.items() if actual[path] != expected]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise StoreError(
                f"the store at {self.path} is corrupted: {shown} fail(s) the sha256 checksum in its manifest. "
                "Harvest it again (saekit harvest ... --overwrite), or restore it from a copy."
            )

    def first_nonfinite(self) -> str | None:
        """Where the first NaN or infinite activation is ("shard-00003.act row 17 (store row
        196625): nan"), or None; reads the whole store, shard by shard."""
        for shard, record in enumerate(self.manifest["shards"]):
            rows = self._read_range("act", int(self._offsets[shard]), int(self._offsets[shard + 1]))
            values = self._as_tensor(rows)
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                row, column = (int(i) for i in bad.nonzero()[0])
                return (
                    f"{record['name']}.act row {row} (store row {int(self._offsets[shard]) + row}), column {column}: "
                    f"{float(values[row, column])}"
                )
        return None

    def _as_tensor(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    def fingerprint(self) -> str:
        """What this store holds, in one hash: its identity fields and every shard's checksums."""
        identity = {key: self.manifest.get(key) for key in IDENTITY_KEYS}
        shards = [(s["name"], s["rows"], s["sha256"]) for s in self.manifest["shards"]]
        return sha256_bytes(json.dumps([identity, shards], sort_keys=True).encode())

    def describe_source(self) -> str:
        return f"the activation store {self.path}"

    def check_d_in(self, d_in: int) -> None:
        """Raise if an SAE of width ``d_in`` cannot train on this store."""
        if d_in != self.d_in:
            raise StoreError(
                f"the SAE reads d_in={d_in} but the store at {self.path} holds {self.hook} activations of "
                f"{self.manifest['model']} with d_in={self.d_in}; create the SAE with d_in={self.d_in}."
            )

    # -- batch source
    def chunk_reader(self, chunk_rows: int | None = None):
        """(read_chunk(c) -> rows [n_c, d_in] in the stored dtype, [n_c for every chunk c])."""
        chunks = self.chunks(chunk_rows)

        def read_chunk(c: int) -> Tensor:
            shard, begin, end = chunks[c]
            base = int(self._offsets[shard])
            return self.activations[base + begin : base + end]

        return read_chunk, [end - begin for _, begin, end in chunks]

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
        """Endless shuffled float32 batches [batch_size // world_size, d_in] (see data/shuffle.py)."""
        read_chunk, sizes = self.chunk_reader(chunk_rows)
        return shuffled_batches(
            read_chunk,
            sizes,
            batch_size,
            seed=seed,
            start=start,
            rank=rank,
            world_size=world_size,
            window_chunks=window_chunks,
        )

    def iterate_once(self, batch_size: int) -> Iterator[Tensor]:
        """Every row once, in store order: float32 [≤ batch_size, d_in]."""
        for begin in range(0, self.n_tokens, batch_size):
            yield self.activations[begin : begin + batch_size].float()


# ---- writing ------------------------------------------------------------------------------

IDENTITY_KEYS = (
    "model",
    "model_fingerprint",
    "hook",
    "dtype",
    "d_in",
    "context_size",
    "corpus_fingerprint",
    "n_tokens",
    "shard_contexts",
    "n_shards",
)
"""Manifest fields that say what a store holds: a rerun resumes or reuses a store only
when all of them match."""
KIND = "activation-store"


def write_shard_files(
    path: Path, index: int, activations: Tensor, meta: np.ndarray, contexts: tuple[int, int], *, dtype: str, d_in: int
) -> dict[str, Any]:
    """Write shard ``index``'s two files into the store folder ``path`` (each atomically)
    and return its manifest record, leaving the manifest alone: ``StoreWriter`` records
    it, or, when ranks write shards in parallel, rank 0 does at the end. Non-finite
    activations are refused: a store never holds a NaN."""
    if activations.ndim != 2 or activations.shape[1] != d_in:
        raise UsageError(f"activations must be [rows, {d_in}], got {tuple(activations.shape)}.")
    if meta.shape != (activations.shape[0], len(META_COLUMNS)):
        raise UsageError(f"meta must be [{activations.shape[0]}, {len(META_COLUMNS)}], got {meta.shape}.")
    acts = activations.detach().to("cpu", STORE_DTYPES[dtype]).contiguous()
    finite = torch.isfinite(acts)
    if not bool(finite.all()):
        row, column = (int(i) for i in (~finite).nonzero()[0])
        raise NonFiniteError(
            f"shard {index} (contexts {contexts[0]}..{contexts[1] - 1}): the model produced a non-finite activation "
            f"({float(acts[row, column])} at row {row}, column {column}); nothing of this shard was written. Run the "
            "model in float32 (--model-dtype float32) or check its weights."
        )
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
    """Writes a store shard by shard, holding the folder's lock until ``finish``/``close``.

    ``header`` holds the manifest's descriptive fields, including every key of
    ``IDENTITY_KEYS``. The folder follows saekit's folder contract (_runtime/folder.py):
    a store with the same identity is resumed (its shards are verified; the first bad
    one and everything after it is redone) or, when finished, reused as it is; one with
    another identity is refused with the differences shown, unless ``overwrite``, which
    deletes only the files saekit wrote there.
    """

    def __init__(self, path: str | Path, header: dict[str, Any], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        missing = [k for k in IDENTITY_KEYS if k not in header]
        if missing:
            raise UsageError(f"a store header needs {missing}.")
        if header["dtype"] not in STORE_DTYPES:
            raise UsageError(f"store dtype {header['dtype']!r} is not supported; use one of {sorted(STORE_DTYPES)}.")
        _adopt_legacy_store(self.path)
        self.folder = OutputFolder(
            self.path, kind=KIND, identity={k: header[k] for k in IDENTITY_KEYS}, owns=(MANIFEST,), overwrite=overwrite
        )
        self.folder.open()
        try:
            self.manifest: dict[str, Any] = {
                "format": FORMAT,
                "version": VERSION,
                "complete": False,
                **header,
                "shards": [],
            }
            old = self._read_old_manifest(self.path / MANIFEST) if self.folder.resumed else None
            if old is not None and old.get("complete"):
                self.manifest = old
            elif old is not None:
                self.manifest["shards"] = self._valid_prefix(old.get("shards", []))
            self._save_manifest()
        except BaseException:
            self.folder.close()
            raise

    @staticmethod
    def _read_old_manifest(path: Path) -> dict[str, Any] | None:
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return old if isinstance(old, dict) and old.get("format") == FORMAT else None

    def _valid_prefix(self, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for index, shard in enumerate(shards):
            if not isinstance(shard, dict) or shard.get("index") != index or shard.get("name") != shard_name(index):
                break
            files = {kind: self.path / f"{shard['name']}.{kind}" for kind in ("act", "tok")}
            if not all(f.is_file() and _sha256_of(f) == shard.get("sha256", {}).get(kind) for kind, f in files.items()):
                break
            kept.append(shard)
        return kept

    @property
    def done_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def shard_files(self, index: int) -> list[str]:
        """The names of shard ``index``'s files, recorded as saekit's before they are written."""
        names = [f"{shard_name(index)}.{kind}" for kind in ("act", "tok")]
        self.folder.output(*names)
        return names

    def write_shard(self, index: int, activations: Tensor, meta: np.ndarray, contexts: tuple[int, int]) -> None:
        """Write shard ``index`` (must be the next one): ``activations`` [rows, d_in] in the
        store dtype (cast if not), ``meta`` int32 [rows, 3] (token id, doc id, position)."""
        if index != self.done_shards:
            raise UsageError(f"shard {index} written out of order; the next shard is {self.done_shards}.")
        names = self.shard_files(index)
        record = write_shard_files(
            self.path, index, activations, meta, contexts, dtype=self.manifest["dtype"], d_in=self.manifest["d_in"]
        )
        self.folder.finished(*names)
        self.manifest["shards"].append(record)
        self._save_manifest()

    def add_written_shards(self, records: list[dict[str, Any]]) -> None:
        """Record shards that ``write_shard_files`` wrote (e.g. on other ranks); with the
        shards already recorded they must make a prefix 0, 1, 2, ... of the store."""
        for record in sorted(records, key=lambda r: r["index"]):
            if record["index"] != self.done_shards:
                raise UsageError(f"shard {record['index']} cannot be recorded; the next shard is {self.done_shards}.")
            self.folder.finished(*self.shard_files(record["index"]))
            self.manifest["shards"].append(record)
        self._save_manifest()

    def finish(self) -> ActivationStore:
        """Mark the store complete (after the last shard), release the folder and open it."""
        rows = sum(s["rows"] for s in self.manifest["shards"])
        if self.done_shards != self.manifest["n_shards"] or rows != self.manifest["n_tokens"]:
            raise UsageError(
                f"cannot finish {self.path}: {self.done_shards}/{self.manifest['n_shards']} shards and "
                f"{rows}/{self.manifest['n_tokens']} rows written."
            )
        self.manifest["complete"] = True
        self._save_manifest()
        self.close()
        return open_store(self.path, verify=False)  # every shard was checksummed as it was written or resumed

    def close(self) -> None:
        """Release the folder (also after a failure; a rerun resumes from what was written)."""
        self.folder.close()

    def _save_manifest(self) -> None:
        self.folder.output(MANIFEST)
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self.folder.finished(MANIFEST)


def _adopt_legacy_store(path: Path) -> None:
    """A store written before folders carried saekit.json: its manifest says it is saekit's,
    so record it (the manifest and its shards' files) as saekit's own."""
    from .._runtime.folder import FORMAT as FOLDER_FORMAT
    from .._runtime.folder import MANIFEST_FILE
    from .._runtime.folder import VERSION as FOLDER_VERSION

    manifest = path / MANIFEST
    if (path / MANIFEST_FILE).exists() or not manifest.is_file():
        return
    old = StoreWriter._read_old_manifest(manifest)
    if old is None:
        return
    shards = [s for s in old.get("shards", []) if isinstance(s, dict) and _SHARD_NAME.fullmatch(str(s.get("name")))]
    written = [MANIFEST] + [f"{s['name']}.{kind}" for s in shards for kind in ("act", "tok")]
    atomic_write_json(
        path / MANIFEST_FILE,
        {
            "format": FOLDER_FORMAT,
            "version": FOLDER_VERSION,
            "kind": KIND,
            "identity": {k: old.get(k) for k in IDENTITY_KEYS},
            "written": written,
            "writing": [],
        },
    )
