"""sha256 checksums of files, streamed in blocks and spread over threads (hashlib
releases the GIL on large blocks, so two cores hash two files at once)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BLOCK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read 4 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        block = bytearray(BLOCK)
        view = memoryview(block)
        while n := file.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike], *, threads: int | None = None) -> dict[Path, str]:
    """{path: hex sha256} for several files, hashed in parallel."""
    paths = [Path(p) for p in paths]
    threads = threads or min(len(paths), os.cpu_count() or 1, 8) or 1
    if threads == 1 or len(paths) <= 1:
        return {p: sha256_file(p) for p in paths}
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths)))
