"""The one recipe for making an SAE, shared by ``saekit train``, ``saekit run`` and
``saekit sweep``: build it from its config section (seeded by the trainer's seed),
record its hook point and model, train it, fit its feature scale if asked, and save it.

It writes into an output folder that the caller has opened (_runtime/folder.py), as

    FOLDER/train/    the trainer's checkpoint and train_log.jsonl (resumed when rerun)
    FOLDER/sae/      the finished SAE
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .._runtime.distributed import DistContext
from .._runtime.folder import OutputFolder
from ..formats.saekit import load_sae
from ..sae.base import SparseAutoencoder
from ..sae.registry import create
from ..training.config import TrainConfig
from ..training.fit_scale import fit_scale
from ..training.trainer import train
from .config import SAESection

OUTPUTS = ("train", "sae")
"""What the recipe writes into its folder."""


def build_sae(
    section: SAESection,
    d_in: int,
    *,
    seed: int,
    hook: str | None,
    model: str | None,
    hook_out: str | None = None,
    d_out: int | None = None,
) -> SparseAutoencoder:
    """An untrained SAE for activations of width ``d_in`` (a transcoder: predicting width
    ``d_out`` at ``hook_out``); ``seed`` sets its initial weights."""
    options = section.sae_options()
    if d_out is not None and d_out != d_in:
        options["d_out"] = d_out
    sae = create(section.arch, d_in=d_in, d_sae=section.width(d_in), seed=seed, **options)
    sae.cfg.hook, sae.cfg.hook_out, sae.cfg.model = hook, hook_out, model
    return sae


def resolved_train(section: SAESection, train_cfg: TrainConfig, d_in: int) -> TrainConfig:
    """``train_cfg`` with its "auto" fields (lr, grad_clip, encoder_lr_scale) set as the
    trainer will set them for this section's SAE, so that a folder records the values a run
    trains with and a change of saekit's defaults is seen as a change of settings. The SAE
    is built on the meta device: no weights are allocated."""
    with torch.device("meta"):
        sae = build_sae(section, d_in, seed=train_cfg.seed, hook=None, model=None)
    return train_cfg.for_sae(sae)


def identity(
    section: SAESection,
    train_cfg: TrainConfig,
    data_fingerprint: str | None,
    *,
    d_in: int,
    hook: str | None,
    model: str | None,
    hook_out: str | None = None,
) -> dict:
    """What an SAE made by this recipe depends on, for the folder it is made in (the
    training settings resolved for its width: ``resolved_train``)."""
    where = {"hook": hook, "model": model} | ({"hook_out": hook_out} if hook_out else {})
    return {
        "sae": vars(section) | {"options": dict(section.options)},
        "train": resolved_train(section, train_cfg, d_in).identity(),
        "data": data_fingerprint,
        **where,
    }


def train_sae(
    path: Path,
    folder: OutputFolder | None,
    section: SAESection,
    train_cfg: TrainConfig,
    data,
    *,
    d_in: int,
    hook: str | None,
    model: str | None,
    hook_out: str | None = None,
    d_out: int | None = None,
    loggers: Sequence[Callable[[dict[str, float]], None]] = (),
    ctx: DistContext | None = None,
) -> SparseAutoencoder:
    """Build, train, fit and save an SAE into ``path`` (see the module docstring) and
    return it; an SAE already finished there is loaded instead. ``folder`` is ``path``'s
    open OutputFolder on the rank that writes (None on the others under torchrun)."""
    ctx = ctx if ctx is not None else DistContext.current()
    if folder is not None and folder.has("sae"):
        return load_sae(path / "sae")
    sae = build_sae(section, d_in, seed=train_cfg.seed, hook=hook, model=model, hook_out=hook_out, d_out=d_out)
    if folder is not None:
        folder.output("train")
    result = train(sae, data, out=path / "train", loggers=loggers, ctx=ctx, **vars(train_cfg))
    if folder is not None:
        folder.finished("train")
    if section.fit_scale:
        fit_scale(result.sae, data, batch_size=train_cfg.batch_size, seed=train_cfg.seed)
    if folder is not None:
        result.sae.save(folder.output("sae"), overwrite=(path / "sae").exists())
        folder.finished("sae")
    ctx.barrier()
    return result.sae
