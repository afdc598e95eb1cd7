"""Trainer checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder written atomically (a crash leaves the previous one intact,
and a crash in the middle of the swap leaves it beside, where loading finds it):

    sae/                         the SAE as it trains (activation scale not yet folded in)
    training_state.safetensors   optimiser moments and the SAE's training buffers
    trainer_state.json           step, activation scale, the options the run was started with
    checksums.json               sha256 of each of the files above

Loading verifies the checksums, that every value is finite, and that the step agrees
with the optimiser's own step count and with the training log. No pickle: tensors go to
safetensors, the rest to JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._runtime.atomic import atomic_path, recover_swapped
from .._runtime.checksums import sha256_files
from .._runtime.errors import DataError
from ..formats.errors import FormatError
from ..formats.saekit import load_sae
from ..sae.base import SparseAutoencoder

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.safetensors"
CHECKSUMS_FILE = "checksums.json"
LOG_FILE = "train_log.jsonl"


class CheckpointError(DataError):
    """A checkpoint is damaged, incomplete, or does not agree with itself or its log."""


def save_checkpoint(
    path: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    names = {id(p): name for name, p in sae.named_parameters()}
    tensors: dict[str, torch.Tensor] = {
        "buffer.tokens_since_fired": sae.tokens_since_fired.cpu(),
        # It picks the next step's path (dense or sparse), so an exact resume needs it.
        "buffer.active_share": torch.tensor(sae._active_share, dtype=torch.float64),
        # AuxK's dead window counts batches of this many tokens.
        "buffer.batch_tokens": torch.tensor(sae.batch_tokens, dtype=torch.int64),
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
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        sums = sha256_files(files)
        (tmp / CHECKSUMS_FILE).write_text(
            json.dumps({str(p.relative_to(tmp)): sums[p] for p in files}, indent=2) + "\n"
        )


def load_checkpoint(
    path: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, *, log: Path | None = None
) -> dict[str, Any] | None:
    """Restore sae and optimizer in place from the checkpoint folder ``path`` and return
    the trainer state; None when there is no checkpoint. ``log``: the run's training log,
    whose steps must agree with the checkpoint's."""
    if not recover_swapped(path):
        return None
    _verify_checksums(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        step = int(state["step"])
        float(state["activation_scale"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path / STATE_FILE} is unreadable ({error}); the checkpoint is damaged. Start the run "
            "again in another folder."
        ) from None
    try:
        saved = load_sae(path / "sae", device=sae.W_dec.device)
    except FormatError as error:
        raise CheckpointError(f"the checkpoint at {path} holds an unreadable SAE: {error}") from None
    if saved.cfg.arch != sae.cfg.arch or saved.state_for_save().keys() != sae.state_for_save().keys():
        raise CheckpointError(
            f"the checkpoint at {path} holds a {saved.cfg.arch} SAE that does not match the one being trained."
        )
    try:
        tensors = load_file(str(path / TENSORS_FILE), device=str(sae.W_dec.device))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path / TENSORS_FILE} is unreadable ({error}); the checkpoint is damaged.") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path / TENSORS_FILE}: {name} holds NaN or infinite values; the checkpoint "
                "cannot be resumed. Start the run again in another folder."
            )
    _check_steps(path, step, tensors, log)

    with torch.no_grad():
        buffers = dict(sae.named_buffers())
        for name, tensor in saved.state_for_save().items():
            (buffers[name] if name in buffers else sae.get_parameter(name)).copy_(tensor)
        sae.tokens_since_fired.copy_(tensors["buffer.tokens_since_fired"])
        if "buffer.active_share" in tensors:  # absent from older checkpoints: the dense path first
            sae._active_share = float(tensors["buffer.active_share"])
        if "buffer.batch_tokens" in tensors:  # absent from older checkpoints: set by the next step
            sae.batch_tokens = int(tensors["buffer.batch_tokens"])
        if hasattr(sae, "sparsity_coefficient"):
            sae.sparsity_coefficient.copy_(tensors["buffer.sparsity_coefficient"])
    params = dict(sae.named_parameters())
    for key, value in tensors.items():
        if key.startswith("adam."):
            name, field = key[len("adam.") :].rsplit(".", 1)
            param = params[name]
            if field == "step":
                # Fused Adam keeps its step count on the parameter's device, the others on the CPU.
                value = value.to(param.device if optimizer.defaults.get("fused") else "cpu")
            else:
                # The moments take the parameter's memory layout (W_enc may be stored
                # transposed): a fused update walks parameter and moments in step.
                value = torch.empty_like(param).copy_(value)
            optimizer.state[param][field] = value
    return state


def _verify_checksums(path: Path) -> None:
    record = path / CHECKSUMS_FILE
    if not record.is_file():
        raise CheckpointError(
            f"the checkpoint at {path} has no {CHECKSUMS_FILE}, so it cannot be verified (it is "
            "incomplete, or older than checksummed checkpoints). Start the run again in another folder."
        )
    try:
        expected = json.loads(record.read_text())
        files = {path / name: str(digest) for name, digest in expected.items()}
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{record} is unreadable ({error}); the checkpoint is damaged.") from None
    if any(".." in Path(name).parts or Path(name).is_absolute() for name in expected):
        raise CheckpointError(f"{record} names files outside the checkpoint; it is damaged.")
    present = {p for p in path.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE}
    missing = sorted(str(p.relative_to(path)) for p in files if not p.is_file())
    if missing or present - set(files):
        extra = sorted(str(p.relative_to(path)) for p in present - set(files))
        raise CheckpointError(
            f"the checkpoint at {path} does not match its {CHECKSUMS_FILE} (missing {missing}, "
            f"unexpected {extra}); it is damaged. Start the run again in another folder."
        )
    actual = sha256_files(files)
    bad = sorted(str(p.relative_to(path)) for p, digest in files.items() if actual[p] != digest)
    if bad:
        raise CheckpointError(
            f"the checkpoint at {path} is damaged: {', '.join(bad)} fail(s) the sha256 in "
            f"{CHECKSUMS_FILE}. Start the run again in another folder."
        )


def _check_steps(path: Path, step: int, tensors: dict[str, torch.Tensor], log: Path | None) -> None:
    """The trainer state's step against Adam's step counts and the training log."""
    adam_steps = {int(t.item()) for key, t in tensors.items() if key.startswith("adam.") and key.endswith(".step")}
    if adam_steps and adam_steps != {step}:
        raise CheckpointError(
            f"the checkpoint at {path} says step {step} but its optimiser state has taken "
            f"{sorted(adam_steps)} steps; it was edited or damaged. Start the run again in another folder."
        )
    if log is not None and log.is_file():
        _, entries = read_log(log)
        logged = [entry["step"] for entry in entries]
        if logged and max(logged) < step - _log_gap(logged):
            raise CheckpointError(
                f"the checkpoint at {path} is at step {step} but the training log {log} ends at "
                f"step {max(logged)}; they do not belong together. Start the run again in another "
                "folder."
            )


def _log_gap(logged: list[int]) -> int:
    """The number of steps between log lines (the most a checkpoint may run ahead of the log)."""
    return logged[0] if len(logged) == 1 else max(b - a for a, b in zip(logged, logged[1:]))


def read_log(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(lines, entries) of a training log; a damaged line is an error naming it."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            int(entry["step"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"{path} line {number} is not a log entry (damaged or edited); move the log away "
                "to resume without it, or start the run again in another folder."
            ) from None
        entries.append(entry)
    return lines, entries
