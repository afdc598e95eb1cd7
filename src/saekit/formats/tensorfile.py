"""Reading tensor files that may be damaged or hostile: every check that can run before a
tensor is allocated (the header against the file's size, names, float dtypes, shapes),
then the checksum, then the values (finite). safetensors only here; no pickle.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from .._runtime.checksums import sha256_file
from .errors import FormatError

MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on a header."""
FLOAT_TYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_json(file: Path, *, max_bytes: int = 1 << 20, what: str = "a config file") -> dict:
    """A JSON object from a file that may be anything: its size is checked before it is read."""
    size = file.stat().st_size
    if size > max_bytes:
        raise FormatError(f"{file} is {size:,} bytes; {what} is a few kilobytes. It is not one.")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise FormatError(f"{file} holds a JSON {type(raw).__name__}, not an object of config fields.")
    return raw


def read_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from a safetensors file's header, checked
    against the file's size, without reading any tensor."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{file} is not a readable safetensors file: it is {size} bytes long.")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise FormatError(
                f"{file} is not a readable safetensors file: its header claims {length:,} bytes "
                f"of a {size:,}-byte file."
            )
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FormatError(f"{file} is not a readable safetensors file: its header is not JSON.") from None
    if not isinstance(header, dict):
        raise FormatError(f"{file} is not a readable safetensors file: its header is not a table.")
    data_bytes = size - 8 - length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{file}: the header entry of tensor {name!r} is malformed.") from None
        if dtype not in _ITEM_BYTES or any(d < 0 for d in shape):
            raise FormatError(
                f"{file}: tensor {name!r} has dtype {dtype!r} and shape {shape}, which safetensors does not write."
            )
        if not (
            isinstance(begin, int)
            and isinstance(end, int)
            and 0 <= begin <= end <= data_bytes
            and end - begin == math.prod(shape) * _ITEM_BYTES[dtype]
        ):
            raise FormatError(
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
        raise FormatError(f"{file} does not match {what}: missing tensors {missing}, unexpected tensors {unexpected}.")
    for name, (dtype, shape) in header.items():
        if dtype not in FLOAT_TYPES:
            raise FormatError(
                f"{file}: tensor {name} is {dtype}; SAE weights are floating point ({sorted(FLOAT_TYPES)})."
            )
        if shape != expected[name]:
            raise FormatError(f"{file}: tensor {name} has shape {shape}, but {what} needs {expected[name]}.")


def load_tensors(file: Path, checksum: str | None = None, *, recorded_in: str = "cfg.json") -> dict[str, torch.Tensor]:
    """The tensors of a file whose header was checked; its sha256 is compared with
    ``checksum`` when there is one, and every value must be finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if checksum is not None and sha256_file(file) != checksum:
        raise FormatError(
            f"{file} does not match the sha256 recorded in {recorded_in}: it is damaged, or it and "
            f"{recorded_in} come from different saves. Save the SAE again, or restore it from a copy."
        )
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise FormatError(f"{file} is not a readable safetensors file: {error}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FormatError(
                f"{file}: tensor {name} holds {bad} non-finite value(s) (NaN or inf); this SAE cannot "
                "be used. Retrain it, or load an earlier checkpoint."
            )
    return tensors
