"""An SAE on disk is a folder: ``cfg.json`` and ``sae_weights.safetensors``.

This module knows the folder's files and nothing of the architectures: it writes them
(atomically, never touching other files in the folder) and reads them back with every
check that can run before a tensor is allocated. No pickle: loading reads JSON and raw
tensors and never runs code from the files.

cfg.json carries, beside the configuration, the sha256 of the weights file
(``"saekit_checksums"``), so that a damaged or mismatched pair is caught on load.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .._runtime.atomic import atomic_path, atomic_write_text
from .._runtime.checksums import sha256_file
from .._runtime.errors import DataError, FolderError

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
CHECKSUMS_KEY = "saekit_checksums"
MAX_CONFIG_BYTES = 1 << 20
"""A cfg.json is a few kilobytes; a larger one is not an SAE config."""
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on a header."""
FLOAT_TYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class SAELoadError(DataError):
    """An SAE folder cannot be read; the message says which file and why."""


def write_sae_folder(
    path: str | os.PathLike, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], *, overwrite: bool = False
) -> Path:
    """Write cfg.json and sae_weights.safetensors into ``path``.

    A new folder appears whole (built beside it, then renamed). An existing one is
    refused unless ``overwrite``; then its two files are replaced one at a time
    (weights first), and any other file in it is left alone. The checksum in cfg.json
    tells a reader if the pair was interrupted half-way."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path} is a file, not an SAE folder; choose another path.")
    if path.exists() and not overwrite:
        raise FolderError(f"{path} already exists; choose another folder or pass overwrite=True to replace its SAE.")
    metadata = {"format": "pt", "saekit_arch": str(cfg.get("arch"))}
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
            _write_config(tmp / CONFIG_FILE, cfg, sha256_file(tmp / WEIGHTS_FILE))
        return path
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        checksum = sha256_file(tmp)
    _write_config(path / CONFIG_FILE, cfg, checksum)
    return path


def _write_config(target: Path, cfg: dict[str, Any], weights_sha256: str) -> None:
    atomic_write_text(target, json.dumps({**cfg, CHECKSUMS_KEY: {WEIGHTS_FILE: weights_sha256}}, indent=2) + "\n")


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(the config fields, the recorded checksums) of an SAE folder's cfg.json."""
    cfg_path = path / CONFIG_FILE
    _check_folder(path)
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise SAELoadError(f"{cfg_path} is {size:,} bytes; an SAE's cfg.json is a few kilobytes. It is not one.")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SAELoadError(f"{cfg_path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise SAELoadError(f"{cfg_path} holds a JSON {type(raw).__name__}, not an object of config fields.")
    checksums = raw.pop(CHECKSUMS_KEY, {})
    if not isinstance(checksums, dict):
        raise SAELoadError(f"{cfg_path}: {CHECKSUMS_KEY} is not a table of file checksums.")
    return raw, checksums


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise SAELoadError(f"{path} is not an SAE folder (expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}).")
    for needed in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / needed).is_file():
            raise SAELoadError(f"{path} has no {needed}; an SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}.")


def read_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from a safetensors file's header, checked
    against the file's size, without reading any tensor."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SAELoadError(f"{file} is not a readable safetensors file: it is {size} bytes long.")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise SAELoadError(
                f"{file} is not a readable safetensors file: its header claims {length:,} bytes "
                f"of a {size:,}-byte file."
            )
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SAELoadError(f"{file} is not a readable safetensors file: its header is not JSON.") from None
    if not isinstance(header, dict):
        raise SAELoadError(f"{file} is not a readable safetensors file: its header is not a table.")
    data_bytes = size - 8 - length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SAELoadError(f"{file}: the header entry of tensor {name!r} is malformed.") from None
        if dtype not in _ITEM_BYTES or any(d < 0 for d in shape):
            raise SAELoadError(
                f"{file}: tensor {name!r} has dtype {dtype!r} and shape {shape}, which safetensors does not write."
            )
        if not (
            isinstance(begin, int)
            and isinstance(end, int)
            and 0 <= begin <= end <= data_bytes
            and end - begin == math.prod(shape) * _ITEM_BYTES[dtype]
        ):
            raise SAELoadError(
                f"{file}: tensor {name!r} ({dtype}, shape {shape}) does not fit the file's "
                f"{data_bytes:,} data bytes at offsets {begin}..{end}; the file is truncated or damaged."
            )
        out[name] = (dtype, shape)
    return out


def check_tensors(
    file: Path, header: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    """Names, float dtypes and shapes in a header against what the config implies."""
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise SAELoadError(f"{file} does not match {what}: missing tensors {missing}, unexpected tensors {unexpected}.")
    for name, (dtype, shape) in header.items():
        if dtype not in FLOAT_TYPES:
            raise SAELoadError(
                f"{file}: tensor {name} is {dtype}; SAE weights are floating point ({sorted(FLOAT_TYPES)})."
            )
        if shape != expected[name]:
            raise SAELoadError(
                f"{file}: tensor {name} has shape {shape}, but cfg.json ({what}) needs {expected[name]}."
            )


def load_tensors(file: Path, checksums: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file whose header was checked; its checksum is verified
    when cfg.json recorded one, and every value must be finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected = checksums.get(file.name)
    if expected is not None and sha256_file(file) != expected:
        raise SAELoadError(
            f"{file} does not match the sha256 recorded in {CONFIG_FILE}: it is damaged, or it and "
            f"{CONFIG_FILE} come from different saves. Save the SAE again, or restore it from a copy."
        )
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise SAELoadError(f"{file} is not a readable safetensors file: {error}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise SAELoadError(
                f"{file}: tensor {name} holds {bad} non-finite value(s) (NaN or inf); this SAE cannot "
                "be used. Retrain it, or load an earlier checkpoint."
            )
    return tensors
