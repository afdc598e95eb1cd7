"""Atomic file writes: write to a temporary sibling, then ``os.replace`` it into place.

A reader (or a resumed run after a crash) sees either the old file or the complete new
one, never a half-written file. The temporary lives in the target's folder so that the
final rename stays on one filesystem, where POSIX makes it atomic.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Write a file (or build a folder) at the yielded path. If the block raises, the
    temporary is removed and ``path`` is left as it was. A file's contents are flushed
    to disk (fsync) before the rename, so a crash right after cannot leave an empty file.

        with atomic_path(out / "weights.bin") as tmp:
            array.tofile(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp} for {path}.")
        if tmp.is_file():
            _fsync_file(tmp)
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            # A folder cannot be renamed over a non-empty folder: move the old one aside,
            # rename the new one in, then delete the old one (a crash in between leaves
            # the old folder beside, never a half-written one in place).
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def recover_swapped(path: str | os.PathLike) -> bool:
    """Whether folder ``path`` exists, after repairing an interrupted ``atomic_path`` swap.

    The swap renames the old folder to .NAME.old-PID-XXXXXXXX, the new one into place,
    then deletes the old one. A crash between the two renames leaves no folder at
    ``path`` and the old one beside it: it is renamed back (the last good copy is used,
    never lost). A crash after them leaves an old copy that is no longer needed: it is
    removed."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not path.exists() and olds:
        os.replace(olds.pop(0), path)
        _fsync_dir(path.parent)
    for old in olds if path.exists() else []:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return path.exists()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as file:
            file.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (UTF-8, keys in the order given, trailing newline) atomically.
    Tensors and arrays are written as lists, paths as strings."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder, and there
    # the rename is as durable as that platform allows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
