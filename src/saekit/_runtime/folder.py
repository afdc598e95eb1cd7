"""A folder saekit writes is a contract: it records what made it and what saekit wrote
there, and one process at a time writes it.

    FOLDER/saekit.json    kind, identity (the resolved settings and the fingerprints of
                          the inputs), and every file saekit wrote there
    FOLDER/.saekit.lock   held (flock) by the process writing the folder; says its pid

Opening a folder:

- absent or empty: it becomes this kind of folder, with this identity;
- same kind and identity: work resumes, and finished outputs are reused;
- another identity: refused, with the differences shown, unless nothing was written yet
  (a run that failed before writing anything does not pin its folder to its settings)
  or ``overwrite`` is given, which deletes only the files saekit wrote there;
- files saekit did not write are never deleted or replaced: an output whose name is
  taken by such a file is refused.

A second process opening a locked folder is refused with the holder's pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .errors import FolderError

MANIFEST_FILE = "saekit.json"
LOCK_FILE = ".saekit.lock"
FORMAT = "saekit-folder"
VERSION = 1
_TEMPORARY = re.compile(r"\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]{8}")
"""Names of atomic_path's temporaries: .NAME.tmp-PID-XXXXXXXX and .NAME.old-PID-XXXXXXXX."""


# ---- the lock --------------------------------------------------------------------------------


_HELD: dict[str, FolderLock] = {}
"""The locks this process holds, by folder. Within one process a folder's lock passes to
whoever opens it last: an earlier holder that was never closed (an exception in a
notebook) must not lock the process out of its own folder."""


class FolderLock:
    """An exclusive lock on a folder, held by one process; released when it exits, even
    by kill -9 (an flock on ``.saekit.lock``)."""

    def __init__(self, folder: Path, *, flag: str = "--out") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.flag = flag
        self._fd: int | None = None

    def acquire(self) -> None:
        key = str(self.path.resolve())
        if key in _HELD and _HELD[key] is not self:
            _HELD.pop(key).release()
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive create with a pid check
            self._acquire_by_create()
            _HELD[key] = self
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderError(
                    f"{self.path.parent} is in use by another saekit process ({holder}); wait for it "
                    f"to finish, or choose another {self.flag}."
                ) from None
            try:  # the file we locked must still be the one at the path (not unlinked by a releaser)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder_record()).encode())
        self._fd = fd
        _HELD[key] = self

    def _acquire_by_create(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = os.open(self.path, os.O_RDONLY)
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderError(
                f"{self.path.parent} is in use by another saekit process ({holder}); wait for it to "
                f"finish, or delete {self.path} if that process no longer runs."
            ) from None
        os.write(fd, json.dumps(_holder_record()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        if _HELD.get(str(self.path.resolve())) is self:
            del _HELD[str(self.path.resolve())]
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200],
    }


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {record['pid']} on {record['host']}, since {record['since']}: {record['command']}"
    except (OSError, ValueError, KeyError):
        return "pid unknown"


# ---- identities ----------------------------------------------------------------------------


def differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Readable differences between two JSON-like values: ["train.lr: 0.001 -> 0.01", ...]."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in list(dict.fromkeys([*saved, *wanted])):
            if key not in wanted:
                out.append(f"{prefix}{key}: {_short(saved[key])} -> (absent)")
            elif key not in saved:
                out.append(f"{prefix}{key}: (absent) -> {_short(wanted[key])}")
            else:
                out += differences(saved[key], wanted[key], f"{prefix}{key}.")
        return out
    if saved != wanted:
        return [f"{prefix.rstrip('.')}: {_short(saved)} -> {_short(wanted)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def jsonable(value: Any) -> Any:
    """value as plain JSON (tuples become lists), for comparing with what was read back."""
    return json.loads(json.dumps(value, default=str))


# ---- the folder ------------------------------------------------------------------------------


class OutputFolder:
    """An output folder of one ``kind`` (see the module docstring).

    ``identity``: what makes its outputs what they are (settings and input fingerprints,
    JSON-like). ``owns``: the top-level names this kind writes, so that a user's file of
    that name is refused before anything is written. ``overwrite``: delete what saekit
    wrote there before starting. ``flag``: how messages name the folder's option."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        kind: str,
        identity: Any,
        owns: Sequence[str] = (),
        overwrite: bool = False,
        flag: str = "--out",
        normalize: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind, self.identity = kind, jsonable(identity)
        self.normalize = normalize
        """Re-reads a saved identity with today's settings classes (fields added since it
        was written take their defaults), so that a new option does not orphan old folders."""
        self.owns, self.overwrite, self.flag = tuple(owns), overwrite, flag
        self.lock = FolderLock(self.path, flag=flag)
        self.manifest: dict[str, Any] = {}
        self.resumed = False
        """Whether the folder already held this kind with this identity when opened."""

    # -- opening and closing
    def open(self) -> OutputFolder:
        if self.lock.held:
            return self
        path = self.path
        if path.exists() and not path.is_dir():
            raise FolderError(
                f"{self.flag} {path} is a file, not a folder; give a folder path (it is created if missing)."
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FolderError(f"{self.flag} {path}: cannot create the folder ({error.strerror}).") from None
        self.lock.acquire()
        try:
            self._adopt()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _adopt(self) -> None:
        saved = self._read_manifest()
        self._remove_stale_temporaries()
        if saved is not None and saved.get("kind") != self.kind:
            raise FolderError(
                f"{self.path} holds a saekit {saved.get('kind')} folder, not a {self.kind} folder; "
                f"choose another {self.flag}."
            )
        carried: set[str] = set()  # saekit's outputs before an overwrite: what remains of them is the user's
        if saved is not None and self.normalize is not None and saved.get("identity") != self.identity:
            try:
                saved["identity"] = jsonable(self.normalize(saved.get("identity")))
            except Exception:  # noqa: BLE001 - an identity today's classes cannot read differs, and is shown
                pass
        if saved is not None and (self.overwrite or saved.get("identity") != self.identity):
            changed = differences(saved.get("identity"), self.identity)
            if self.overwrite or not self._wrote_anything(saved):
                carried = {Path(e).parts[0] for e in [*saved.get("written", []), *saved.get("writing", [])]}
                self._remove_written(saved)
                saved = None
            else:
                shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
                raise FolderError(
                    f"{self.path} holds a {self.kind} made with other settings ({shown}); to keep it, "
                    f"choose another {self.flag}; to replace what saekit wrote there, add --overwrite."
                )
        self.resumed = saved is not None
        self.manifest = saved or {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "identity": self.identity,
            "written": [],
            "writing": [],
        }
        known = set(self.manifest["written"]) | set(self.manifest["writing"]) | carried
        for name in self.owns:
            target = self.path / name
            if target.exists() and name not in known and not any(w.startswith(name + "/") for w in known):
                raise FolderError(
                    f"{target} exists and saekit did not write it, so it will not be replaced; "
                    f"choose another {self.flag}, or move it away."
                )
        self._save()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what saekit writes here
    def output(self, *names: str) -> Path:
        """The path of output ``names[0]`` (a file or folder in this folder), each of
        ``names`` recorded as being written before anything is: an interrupted write is
        still known to be saekit's."""
        new = [n for n in names if n not in self.manifest["writing"] and n not in self.manifest["written"]]
        if new:
            self.manifest["writing"] += new
            self._save()
        return self.path / names[0]

    def finished(self, *names: str) -> None:
        """Record every file now under each output of ``names`` as written by saekit."""
        for name in names:
            target = self.path / name
            files = (
                [name]
                if not target.is_dir()
                else [
                    str(p.relative_to(self.path))
                    for p in sorted(target.rglob("*"))
                    if p.is_file() and p.name != LOCK_FILE
                ]
            )
            self.manifest["written"] = sorted(set(self.manifest["written"]) | set(files))
            if name in self.manifest["writing"]:
                self.manifest["writing"].remove(name)
        self._save()

    def has(self, name: str) -> bool:
        """Whether output ``name`` was finished here (recorded, and still on disk)."""
        written = self.manifest.get("written", [])
        return (name in written or any(w.startswith(name + "/") for w in written)) and (self.path / name).exists()

    # -- internals
    def _read_manifest(self) -> dict[str, Any] | None:
        file = self.path / MANIFEST_FILE
        if not file.is_file():
            return None
        try:
            saved = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            raise FolderError(
                f"{file} is damaged (not valid JSON); choose another {self.flag}, or delete that file "
                "to let saekit treat the folder as new."
            ) from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise FolderError(f"{file} is not a saekit folder record; choose another {self.flag}.")
        for key in ("written", "writing"):
            entries = saved.get(key, [])
            if not isinstance(entries, list) or not all(isinstance(e, str) and _inside(e) for e in entries):
                raise FolderError(
                    f"{file}: its {key!r} list names paths outside the folder; the record is damaged. "
                    f"Choose another {self.flag}."
                )
            saved[key] = entries
        return saved

    def _wrote_anything(self, saved: dict[str, Any]) -> bool:
        """Whether a file of this folder's record holds output (a started output that is
        still empty, or holds only another folder record, does not count)."""

        def content(path: Path) -> bool:
            if path.is_dir():
                return any(p.is_file() and p.name not in (MANIFEST_FILE, LOCK_FILE) for p in path.rglob("*"))
            return path.exists()

        return any(content(self.path / entry) for entry in [*saved.get("written", []), *saved.get("writing", [])])

    def _remove_written(self, saved: dict[str, Any]) -> None:
        """Delete the files saekit recorded here, then the folders they leave empty."""
        for entry in [*saved.get("written", []), *saved.get("writing", [])]:
            target = self.path / entry
            if target.is_dir() and not target.is_symlink():
                remove_saekit_tree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            _prune_empty(target.parent, self.path)
        (self.path / MANIFEST_FILE).unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        for entry in self.path.iterdir():
            match = _TEMPORARY.fullmatch(entry.name)
            if match and not _alive(int(match.group(3))):
                if match.group(2) == "old" and not (self.path / match.group(1)).exists():
                    continue  # the only copy left by an interrupted swap: recover_swapped() restores it
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def _save(self) -> None:
        atomic_write_json(self.path / MANIFEST_FILE, self.manifest)


def remove_saekit_tree(folder: Path) -> None:
    """Delete a folder that saekit wrote: per its own record where it has one (files a
    user added are kept), else wholesale (a folder saekit writes in one atomic piece)."""
    if (folder / MANIFEST_FILE).is_file():
        try:
            record = json.loads((folder / MANIFEST_FILE).read_text())
            entries = [e for e in record.get("written", []) + record.get("writing", []) if _inside(e)]
        except (json.JSONDecodeError, OSError, AttributeError, TypeError):
            entries = None
        if entries is not None:
            for entry in entries:
                target = folder / entry
                if target.is_dir() and not target.is_symlink():
                    remove_saekit_tree(target)
                else:
                    target.unlink(missing_ok=True)
                _prune_empty(target.parent, folder)
            (folder / MANIFEST_FILE).unlink(missing_ok=True)
            _prune_empty(folder, folder.parent)
            return
    shutil.rmtree(folder)


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _inside(entry: str) -> bool:
    parts = Path(entry).parts
    return bool(parts) and not Path(entry).is_absolute() and ".." not in parts


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def fingerprint_paths(paths: Iterable[Path], *, full_below: int = 256 << 20) -> str:
    """A content fingerprint of input files: their sha256 where smaller than
    ``full_below`` bytes, else their size and the sha256 of their first and last MiB."""
    import hashlib

    from .checksums import sha256_file

    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        if size < full_below:
            digest.update(sha256_file(path).encode())
        else:
            with open(path, "rb") as file:
                digest.update(file.read(1 << 20))
                file.seek(-(1 << 20), os.SEEK_END)
                digest.update(file.read(1 << 20))
    return digest.hexdigest()
