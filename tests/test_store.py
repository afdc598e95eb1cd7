"""Activation store and shuffle buffer on synthetic data: exact round trips, damage
detection, resumable writes, deterministic rank-independent batches, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from saekit._runtime.errors import FolderError
from saekit.data.shuffle import shuffled_batches
from saekit.data.store import IDENTITY_KEYS, StoreError, StoreWriter, open_store

D_IN = 8


def header(n_tokens: int, n_shards: int, dtype: str = "float32", d_in: int = D_IN) -> dict:
    return {
        "model": "test",
        "model_fingerprint": "f00d",
        "hook": "layers.0.resid_post",
        "dtype": dtype,
        "d_in": d_in,
        "context_size": 4,
        "corpus_fingerprint": "abc",
        "n_tokens": n_tokens,
        "shard_contexts": 1,
        "n_shards": n_shards,
    }


def rows_for(n: int, d_in: int = D_IN) -> torch.Tensor:
    """Row i is unique: column 0 holds i, the rest is noise."""
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(n))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def meta_for(begin: int, end: int) -> np.ndarray:
    i = np.arange(begin, end, dtype=np.int32)
    return np.stack([i * 3, i // 10, i % 10], axis=1)


def write_store(path, acts: torch.Tensor, shard_rows: list[int], dtype: str = "float32", finish: bool = True):
    writer = StoreWriter(path, header(sum(shard_rows), len(shard_rows), dtype, acts.shape[1]))
    begin = 0
    for index, rows in enumerate(shard_rows):
        writer.write_shard(index, acts[begin : begin + rows], meta_for(begin, begin + rows), (index, index + 1))
        begin += rows
    return writer.finish() if finish else writer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_exact(tmp_path, dtype):
    acts = rows_for(100).to(getattr(torch, dtype))
    store = write_store(tmp_path / "s", acts, [30, 30, 40], dtype)
    store = open_store(tmp_path / "s", verify=True)
    assert (store.n_tokens, store.d_in, store.dtype, len(store.activations)) == (100, D_IN, acts.dtype, 100)
    assert torch.equal(store.activations[:], acts)
    assert torch.equal(store.activations[25:65], acts[25:65])  # across shard boundaries
    index = torch.tensor([99, 0, 31, 30, 29, -1])
    assert torch.equal(store.activations[index], acts[index])
    assert torch.equal(store.activations[-1], acts[-1])
    assert torch.equal(store.token_ids[:], torch.arange(100) * 3)
    assert torch.equal(store.doc_ids[40:50], torch.full((10,), 4))
    assert torch.equal(store.positions[index], index.remainder(100) % 10)
    assert torch.equal(torch.cat(list(store.iterate_once(33))), acts.float())


def test_truncated_shard_is_detected(tmp_path):
    write_store(tmp_path / "s", rows_for(60), [30, 30])
    shard = tmp_path / "s" / "shard-00001.act"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(StoreError, match="shard-00001.act.*truncated"):
        open_store(tmp_path / "s")


def test_corrupted_shard_fails_verification(tmp_path):
    write_store(tmp_path / "s", rows_for(60), [30, 30])
    shard = tmp_path / "s" / "shard-00000.tok"
    data = bytearray(shard.read_bytes())
    data[17] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = open_store(tmp_path / "s", verify=False)  # sizes still match: only the checksum can tell
    with pytest.raises(StoreError, match="shard-00000.tok.*checksum"):
        store.verify()
    with pytest.raises(StoreError, match="shard-00000.tok.*checksum"):
        open_store(tmp_path / "s")  # opening verifies by default


def test_manifest_that_does_not_match_its_shards(tmp_path):
    write_store(tmp_path / "s", rows_for(60), [30, 30])
    manifest_path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "n_tokens": 61}))
    with pytest.raises(StoreError, match="does not match its shards"):
        open_store(tmp_path / "s")
    manifest["shards"][0]["rows"] = 31
    manifest["n_tokens"] = 61
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="shard-00000.act"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "shard-00001.tok").unlink()
    with pytest.raises(StoreError, match="missing|shard-00000"):
        open_store(tmp_path / "s")
    with pytest.raises(StoreError, match="not an activation store"):
        open_store(tmp_path / "nothing")


def test_unfinished_store_cannot_be_opened_but_resumes(tmp_path):
    acts = rows_for(90)
    writer = StoreWriter(tmp_path / "s", header(90, 3))
    writer.write_shard(0, acts[:30], meta_for(0, 30), (0, 1))
    writer.write_shard(1, acts[30:60], meta_for(30, 60), (1, 2))
    with pytest.raises(StoreError, match="resume"):
        open_store(tmp_path / "s")
    # a rerun with the same identity keeps both shards ...
    assert StoreWriter(tmp_path / "s", header(90, 3)).done_shards == 2
    # ... but redoes a shard that fails its checksum, and everything after it
    (tmp_path / "s" / "shard-00001.act").write_bytes(b"\0" * (30 * D_IN * 4))
    resumed = StoreWriter(tmp_path / "s", header(90, 3))
    assert resumed.done_shards == 1
    resumed.write_shard(1, acts[30:60], meta_for(30, 60), (1, 2))
    resumed.write_shard(2, acts[60:], meta_for(60, 90), (2, 3))
    assert torch.equal(resumed.finish().activations[:], acts)
    # another identity is refused, with the difference shown
    other = {**header(90, 3), "hook": "layers.1.resid_post"}
    with pytest.raises(
        FolderError, match=r"other settings \(hook: \"layers.0.resid_post\" -> \"layers.1.resid_post\"\).*--overwrite"
    ):
        StoreWriter(tmp_path / "s", other)


def test_finished_store_is_reused_and_overwrite_deletes_only_what_saekit_wrote(tmp_path):
    write_store(tmp_path / "s", rows_for(30), [30])
    (tmp_path / "s" / "notes.txt").write_text("mine")
    again = StoreWriter(tmp_path / "s", header(30, 1))  # the same settings: the finished store, as it is
    assert again.complete and again.done_shards == 1
    again.close()
    writer = StoreWriter(tmp_path / "s", header(30, 1), overwrite=True)
    assert writer.done_shards == 0 and not (tmp_path / "s" / "shard-00000.act").exists()
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"
    writer.close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    (tmp_path / "other" / "manifest.json").write_text("{}")  # a file of the name the store writes, not saekit's
    with pytest.raises(FolderError, match="saekit did not write it"):
        StoreWriter(tmp_path / "other", header(30, 1), overwrite=True)
    assert (tmp_path / "other" / "manifest.json").read_text() == "{}"
    assert set(IDENTITY_KEYS) <= set(header(1, 1)) | {"hook"}


def test_d_in_mismatch_is_a_clear_error(tmp_path):
    store = write_store(tmp_path / "s", rows_for(30), [30])
    store.check_d_in(D_IN)
    with pytest.raises(StoreError, match="d_in=16.*d_in=8"):
        store.check_d_in(16)


# ---- batches ------------------------------------------------------------------------------


def served_ids(batches, n: int) -> torch.Tensor:
    return torch.cat([next(batches)[:, 0] for _ in range(n)]).long()


def test_batches_are_float32_deterministic_and_cover_each_epoch(tmp_path):
    small = write_store(tmp_path / "bf16", rows_for(200).bfloat16(), [200], "bfloat16")
    first = next(small.batches(100, seed=1))
    assert first.dtype == torch.float32 and first.shape == (100, D_IN)
    assert torch.equal(first[:, 0].long().sort().values.unique(), first[:, 0].long().sort().values)

    store = write_store(tmp_path / "s", rows_for(1000), [300, 300, 400])
    kwargs = dict(chunk_rows=64, window_chunks=3)
    a = served_ids(store.batches(100, seed=1, **kwargs), 20)
    assert torch.equal(a, served_ids(store.batches(100, seed=1, **kwargs), 20))
    assert not torch.equal(a, served_ids(store.batches(100, seed=2, **kwargs), 20))
    # 10 batches per epoch: each epoch serves every row once, in a new order
    assert torch.equal(a[:1000].sort().values, torch.arange(1000))
    assert torch.equal(a[1000:].sort().values, torch.arange(1000))
    assert not torch.equal(a[:1000], a[1000:])
    assert not torch.equal(a[:1000], torch.arange(1000))


def test_ranks_split_the_global_batch_and_start_skips(tmp_path):
    store = write_store(tmp_path / "s", rows_for(1000), [500, 500])
    kwargs = dict(seed=5, chunk_rows=50, window_chunks=4)
    one = [next(b) for b in [store.batches(96, **kwargs)] for _ in range(25)]
    ranks = [store.batches(96, rank=r, world_size=3, **kwargs) for r in range(3)]
    for i in range(25):
        assert torch.equal(torch.cat([next(r) for r in ranks]), one[i])
    for start in (1, 7, 10, 11, 23):  # 10 batches per epoch; 10 and 11 cross into epoch 2
        resumed = store.batches(96, start=start, **kwargs)
        for i in range(start, 25):
            assert torch.equal(next(resumed), one[i])
    with pytest.raises(ValueError, match="divisible"):
        next(store.batches(100, rank=0, world_size=3))
    with pytest.raises(ValueError, match="larger than"):
        next(store.batches(2000))


def test_shuffled_batches_read_only_what_they_serve():
    chunks = [torch.full((10, 2), float(c)) for c in range(50)]
    read = []

    def read_chunk(c):
        read.append(c)
        return chunks[c]

    batches = shuffled_batches(read_chunk, [10] * 50, 20, seed=0, start=12, window_chunks=5)
    next(batches)
    assert len(read) <= 10  # skipping 12 batches did not read the 5 windows before


def test_store_is_a_batch_source_for_the_trainer(tmp_path):
    from saekit.data.source import as_source

    write_store(tmp_path / "s", rows_for(64), [64])
    source = as_source(str(tmp_path / "s"))
    assert source.d_in == D_IN and next(source.batches(32)).shape == (32, D_IN)


# ---- a store larger than the memory the process may use ---------------------------------

LIMIT_MB = 1400
STORE_MB = 1600


@pytest.mark.slow
def test_store_larger_than_the_address_space_limit_still_trains(tmp_path):
    """Under RLIMIT_AS (every mapping and allocation counts) below the store's size, a
    child process reads every row and trains an SAE: the store is streamed, not loaded."""
    d_in, shard_rows = 512, 65_536  # bf16: 64 MiB a shard
    n_shards = STORE_MB * (1 << 20) // (shard_rows * d_in * 2)
    writer = StoreWriter(tmp_path / "big", header(n_shards * shard_rows, n_shards, "bfloat16", d_in))
    block = torch.randn(shard_rows, d_in).bfloat16()
    meta = np.zeros((shard_rows, 3), dtype=np.int32)
    for index in range(n_shards):
        writer.write_shard(index, block.roll(index, dims=0), meta, (index, index + 1))
    writer.finish()
    size_mb = sum(f.stat().st_size for f in (tmp_path / "big").iterdir()) / (1 << 20)
    assert size_mb > LIMIT_MB

    child = textwrap.dedent(f"""
        import resource
        limit = {LIMIT_MB} << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import torch, saekit
        from saekit.data.store import open_store
        store = open_store({str(tmp_path / "big")!r})
        try:
            bytearray({int(size_mb)} << 20)
            raise SystemExit("the limit does not bind: the whole store would fit in memory")
        except MemoryError:
            pass
        total = torch.zeros(store.d_in)
        for x in store.iterate_once(16384):
            total += x.sum(0)
        assert torch.isfinite(total).all()
        sae = saekit.create("topk", d_in=store.d_in, d_sae=512, k=16)
        saekit.train(sae, store, steps=8, batch_size=1024, normalization_tokens=2048, progress=False)
        print("trained")
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout
