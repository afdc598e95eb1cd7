"""Harvest sharded by rank: W processes fill one activation store together.

Every rank computes the same plan (data/harvest.py: hook points, shard boundaries,
headers) from the same corpus and options; rank r runs the model on shards r, r + W,
r + 2W, ... only and writes their files straight into the store, each with a small
``shard-NNNNN.json`` record beside it; when all ranks are done, rank 0 checks the
records, writes the manifest once and removes them. The store is the one a single
process makes: same shards, same rows, same manifest.

Resume: a rerun skips every shard whose record is there and whose files match its
checksums (and those an interrupted single-process harvest recorded in the manifest).
The ranks must share the output folder's filesystem (all write into it).
"""

from __future__ import annotations

import json
from pathlib import Path

from .._runtime.atomic import atomic_write_json
from .._runtime.distributed import DistContext
from .._runtime.errors import UsageError
from .corpus import TokenizedCorpus
from .harvest import DEFAULT_BATCH_CONTEXTS, DEFAULT_SHARD_TOKENS, harvest, harvest_shard, plan_harvest
from .model import LoadedModel
from .store import MANIFEST, ActivationStore, StoreWriter, _sha256_of, open_store, shard_name, write_shard_files


def harvest_distributed(
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
    ctx: DistContext | None = None,
) -> dict[str, ActivationStore]:
    """``harvest`` (same arguments, same result), with the shards spread over the ranks of
    the initialised process group; plain ``harvest`` when there is none. Every rank
    passes the same corpus and options and gets the finished store(s) back."""
    ctx = ctx if ctx is not None else DistContext.current()
    if not ctx.enabled:
        return harvest(
            loaded,
            corpus,
            hooks,
            out,
            max_tokens=max_tokens,
            dtype=dtype,
            batch_contexts=batch_contexts,
            shard_tokens=shard_tokens,
            overwrite=overwrite,
            progress=progress,
        )
    if batch_contexts < 1:
        raise UsageError("batch_contexts must be positive.")
    plan = plan_harvest(loaded, corpus, hooks, out, max_tokens=max_tokens, dtype=dtype, shard_tokens=shard_tokens)
    ctx.agree(int(corpus.fingerprint[:12], 16), "the corpus (its fingerprint)")
    ctx.agree(plan.n_shards, "the number of shards")

    # Rank 0 alone prepares the folders (identity checks, overwrite, an unfinished
    # manifest) and keeps the writers; the others wait for it, then trust the folders.
    writers, error = {}, None
    if ctx.is_main:
        try:
            writers = {
                name: StoreWriter(plan.paths[name], {**plan.header, "hook": name}, overwrite=overwrite)
                for name in plan.names
            }
        except Exception as caught:  # re-raised below, once the other ranks know to stop
            error = caught
    try:
        if ctx.is_main and error is None:  # every file any rank may write, recorded as saekit's first
            for writer in writers.values():
                writer.folder.output(
                    *(f"{shard_name(s)}.{kind}" for s in range(plan.n_shards) for kind in ("act", "tok", "json"))
                )
        ctx.raise_together(error, f"preparing the store(s) in {out}")
        return _harvest_shards(
            loaded, corpus, plan, writers, ctx, batch_contexts=batch_contexts, progress=progress, out=out
        )
    finally:
        for writer in writers.values():
            writer.close()


def _harvest_shards(loaded, corpus, plan, writers, ctx, *, batch_contexts: int, progress: bool, out) -> dict:

    mine = list(range(ctx.rank, plan.n_shards, ctx.world_size))
    done = {name: _done_shards(plan.paths[name], mine) for name in plan.names}
    todo_rows = sum(
        int(plan.mask[slice(*plan.contexts(s))].sum()) for s in mine if any(s not in done[name] for name in plan.names)
    )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=todo_rows,
        unit="tok",
        unit_scale=True,
        disable=not (progress and ctx.is_main),
        desc=f"harvest {plan.names[0]}"
        + (f" (+{len(plan.names) - 1})" if len(plan.names) > 1 else "")
        + f" [rank 0 of {ctx.world_size}]",
    )
    error = None
    try:
        with bar:
            for shard in mine:
                todo = [name for name in plan.names if shard not in done[name]]
                if not todo:
                    continue
                parts, meta = harvest_shard(loaded, corpus, plan, shard, todo, batch_contexts=batch_contexts, bar=bar)
                for name in todo:
                    record = write_shard_files(
                        plan.paths[name],
                        shard,
                        parts[name],
                        meta,
                        plan.contexts(shard),
                        dtype=plan.header["dtype"],
                        d_in=plan.header["d_in"],
                    )
                    atomic_write_json(_record_path(plan.paths[name], shard), record)
    except Exception as caught:
        error = caught
    ctx.raise_together(error, "harvesting the shards")

    error = None
    if ctx.is_main:
        try:
            for name, writer in writers.items():
                recorded = writer.done_shards
                records = [_read_record(plan.paths[name], shard) for shard in range(recorded, plan.n_shards)]
                writer.add_written_shards(records)
                writer.finish()
                for shard in range(plan.n_shards):
                    _record_path(plan.paths[name], shard).unlink(missing_ok=True)
        except Exception as caught:
            error = caught
    ctx.raise_together(error, f"finishing the store(s) in {out}")
    return {name: open_store(plan.paths[name], verify=False) for name in plan.names}


def _record_path(store: Path, shard: int) -> Path:
    return store / f"{shard_name(shard)}.json"


def _read_record(store: Path, shard: int) -> dict:
    path = _record_path(store, shard)
    if not path.is_file():
        raise FileNotFoundError(f"shard {shard} of {store} was not written (no {path.name}); run the harvest again.")
    return json.loads(path.read_text())


def _done_shards(store: Path, shards: list[int]) -> set[int]:
    """Those of ``shards`` already written and intact: recorded in the manifest by an
    earlier single-process harvest, or beside their files by an earlier distributed one."""
    manifest = json.loads((store / MANIFEST).read_text())  # rank 0 has validated it
    done = {record["index"] for record in manifest["shards"]}
    for shard in shards:
        if shard in done or not _record_path(store, shard).is_file():
            continue
        try:
            record = json.loads(_record_path(store, shard).read_text())
        except json.JSONDecodeError:
            continue
        if record.get("index") == shard and all(
            (store / f"{record['name']}.{kind}").is_file()
            and _sha256_of(store / f"{record['name']}.{kind}") == record["sha256"][kind]
            for kind in ("act", "tok")
        ):
            done.add(shard)
    return done
