"""Gemma Scope's SAE folders (google/gemma-scope-*): ``params.npz`` holding W_enc
[d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold [d_sae]: JumpReLU SAEs whose
encoder reads x itself (no b_dec subtracted), f = ReLU(z)·1[z > θ] with z = x W_enc + b_enc.

The npz is read without pickle (``allow_pickle=False``), and every array's shape and
dtype are read from its .npy header and checked against the archive's sizes before the
array itself is.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..sae.base import SparseAutoencoder
from ..sae.config import SAEConfig
from ..sae.registry import architecture
from .errors import FormatError

FILE = "params.npz"
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def load_folder(path: Path) -> SparseAutoencoder:
    file = path / FILE
    shapes = _shapes(file)
    names = {name.lower(): name for name in shapes}
    missing = [name for name in NAMES if name.lower() not in names]
    if missing:
        raise FormatError(f"{file} lacks {missing}; a Gemma Scope SAE holds {list(NAMES)}.")
    d_in, d_sae = shapes[names["w_enc"]]
    expected = {
        "w_enc": (d_in, d_sae),
        "w_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    for key, shape in expected.items():
        if shapes[names[key]] != shape:
            raise FormatError(
                f"{file}: {names[key]} has shape {shapes[names[key]]}, but W_enc {(d_in, d_sae)} needs {shape}."
            )
    with np.load(file, allow_pickle=False) as arrays:
        tensors = {name: torch.from_numpy(np.asarray(arrays[names[name.lower()]], dtype=np.float32)) for name in NAMES}
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise FormatError(f"{file}: {name} holds NaN or infinite values.")
    tensors["threshold"] = tensors["threshold"].clamp_min(0)  # ReLU(z)·1[z > θ] = z·1[z > max(θ, 0)]
    layer = re.search(r"layer_(\d+)", str(path))
    site = "mlp_out" if "mlp" in str(path) else "attn_out" if "att" in str(path) else "resid_post"
    cfg = SAEConfig.from_dict(
        {
            "arch": "jumprelu",
            "d_in": d_in,
            "d_sae": d_sae,
            "l0_coefficient": 0.0,
            "apply_b_dec_to_input": False,
            "hook": f"layers.{layer.group(1)}.{site}" if layer else None,
            "provenance": {"format": "gemma_scope"},
        },
        source=str(file),
    )
    return architecture("jumprelu").from_tensors(cfg, tensors)


def _shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """{array name: shape} from the .npy headers inside the archive, checked against the
    archive's own record of each member's size."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as error:
        raise FormatError(f"{file} is not an npz archive ({error}).") from None
    shapes = {}
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = reader(member)
                except (ValueError, OSError) as error:
                    raise FormatError(f"{file}: {info.filename} is not an .npy array ({error}).") from None
            if dtype.hasobject or dtype.kind not in "fiu":
                raise FormatError(f"{file}: {name} has dtype {dtype}, not numbers.")
            if int(np.prod(shape)) * dtype.itemsize > info.file_size:
                raise FormatError(
                    f"{file}: {name} claims shape {shape} ({dtype}), more than its "
                    f"{info.file_size:,} bytes in the archive."
                )
            shapes[name] = tuple(int(d) for d in shape)
    return shapes
