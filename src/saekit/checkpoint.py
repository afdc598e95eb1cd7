"""Trainer checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder written atomically (a crash leaves the previous one intact):

    sae/                    the SAE as it trains (activation scale not yet folded in)
    training_state.safetensors   optimiser moments and the SAE's training buffers
    trainer_state.json      step, activation scale, the options the run was started with

No pickle: tensors go to safetensors, the rest to JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path
from .sae.base import SparseAutoencoder
from .sae.persistence import load_sae

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.safetensors"


def save_checkpoint(path: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    names = {id(p): name for name, p in sae.named_parameters()}
    tensors: dict[str, torch.Tensor] = {
        "buffer.tokens_since_fired": sae.tokens_since_fired.cpu(),
        # It picks the next step's path (dense or sparse), so an exact resume needs it.
        "buffer.active_share": torch.tensor(sae._active_share, dtype=torch.float64),
    }
    if hasattr(sae, "sparsity_coefficient"):
        tensors["buffer.sparsity_coefficient"] = sae.sparsity_coefficient.cpu()
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"adam.{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        tmp.mkdir()
        sae.save(tmp / "sae")
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_checkpoint(path: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore sae and optimizer in place from ``path``; return the trainer state."""
    saved = load_sae(path / "sae", device=sae.W_dec.device)
    if saved.cfg.arch != sae.cfg.arch or saved.state_for_save().keys() != sae.state_for_save().keys():
        raise ValueError(f"the checkpoint at {path} holds a {saved.cfg.arch} SAE that does not match the one being trained.")
    with torch.no_grad():
        for name, tensor in saved.state_for_save().items():
            sae.get_buffer(name).copy_(tensor) if name in dict(sae.named_buffers()) else sae.get_parameter(name).copy_(tensor)
    tensors = load_file(str(path / TENSORS_FILE), device=str(sae.W_dec.device))
    with torch.no_grad():
        sae.tokens_since_fired.copy_(tensors["buffer.tokens_since_fired"])
        if "buffer.active_share" in tensors:  # absent from older checkpoints: the dense path first
            sae._active_share = float(tensors["buffer.active_share"])
        if hasattr(sae, "sparsity_coefficient"):
            sae.sparsity_coefficient.copy_(tensors["buffer.sparsity_coefficient"])
    params = dict(sae.named_parameters())
    for key, value in tensors.items():
        if key.startswith("adam."):
            name, field = key[len("adam."):].rsplit(".", 1)
            param = params[name]
            if field == "step":
                # Fused Adam keeps its step count on the parameter's device, the others on the CPU.
                value = value.to(param.device if optimizer.defaults.get("fused") else "cpu")
            else:
                # The moments take the parameter's memory layout (W_enc may be stored
                # transposed): a fused update walks parameter and moments in step.
                value = torch.empty_like(param).copy_(value)
            optimizer.state[param][field] = value
    return json.loads((path / STATE_FILE).read_text())
