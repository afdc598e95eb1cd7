"""Before the first step: the data-dependent start of a run.

An SAE trains on activations scaled by c so that E‖c·x‖ = √d (SAEConfig's
normalize_activations "expected_norm"), with b_dec started at the target's mean and the
architecture's own ``calibrate`` run on the scaled sample. All of it is estimated from
about normalization_tokens rows read with a seed the training order does not use, over
every rank as one process would. The trainer folds c back into the weights at the end;
continued training unfolds it first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._runtime.distributed import DistContext
from .._runtime.errors import NonFiniteError, UsageError
from ..data.pairs import as_pair
from ..data.source import describe_nonfinite
from ..sae.base import SparseAutoencoder
from .config import TrainConfig


def prepare(sae: SparseAutoencoder, source, cfg: TrainConfig, ctx: DistContext, device: torch.device):
    """Before the first step: undo a folded scale (continued training), estimate the
    activation scales c with E‖c·x‖ = √d (of the input, and of a transcoder's target) over
    all ranks, start b_dec at the target's mean. Returns (c_in, c_out)."""
    previous = sae.folded_scales()
    if previous != (1.0, 1.0):
        sae.fold_activation_scale(1.0 / previous[0], 1.0 / previous[1])
        sae.cfg.activation_scale = sae.cfg.target_scale = 1.0
        return previous
    x, y = sample_rows(source, cfg, ctx)
    x, y = x.to(device), (None if y is None else y.to(device))
    for side in (x, y):
        if side is not None and not bool(torch.isfinite(side).all()):
            where = describe_nonfinite(source)
            raise NonFiniteError(
                f"the activations hold NaN or infinite values{' (' + where + ')' if where else ''}; "
                "nothing was trained. Harvest the data again or remove those rows."
            )
    if sae.cfg.normalize_activations == "expected_norm":
        scale = norm_scale(x, ctx)
        target_scale = scale if y is None else norm_scale(y, ctx)
    else:
        scale = target_scale = 1.0
    target = x if y is None else y
    sae.init_b_dec(ctx.mean_(target.mean(0) * target_scale))
    sae.calibrate(ctx.gather_rows(x) * scale)  # on the whole sample, as one process would
    ctx.broadcast_module_(sae)
    return scale, target_scale


def norm_scale(sample: Tensor, ctx: DistContext) -> float:
    """c with E‖c·x‖ = √d over the sample on every rank."""
    device = sample.device
    norms = torch.stack([sample.norm(dim=-1).sum(), torch.tensor(float(sample.shape[0]), device=device)])
    ctx.sum_(norms)
    mean_norm = float(norms[0] / norms[1])
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise UsageError(f"the activations' mean norm is {mean_norm}; they cannot be normalised (are they all zero?).")
    return math.sqrt(sample.shape[1]) / mean_norm


def sample_rows(source, cfg: TrainConfig, ctx: DistContext) -> tuple[Tensor, Tensor | None]:
    """About normalization_tokens rows (x, and y when the target is not x), read with a
    seed the training order does not use."""
    xs, ys, got = [], [], 0
    for batch in source.batches(cfg.batch_size, seed=cfg.seed + 7919, rank=ctx.rank, world_size=ctx.world_size):
        pair = as_pair(batch)
        xs.append(pair.x)
        if not pair.same:
            ys.append(pair.y)
        got += pair.x.shape[0] * ctx.world_size
        if got >= cfg.normalization_tokens:
            break
    return torch.cat(xs).float(), (torch.cat(ys).float() if ys else None)
