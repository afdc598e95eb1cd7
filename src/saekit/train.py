"""The trainer: one loop for every architecture.

It asks an SAE for ``loss(x, sparsity_scale=...)`` and calls its ``before_optimizer_step`` /
``after_optimizer_step`` hooks; it never asks which architecture it trains. Around that:
Adam, learning-rate warm-up and decay, sparsity-coefficient warm-up, gradient clipping,
activation normalisation (estimated first, folded into the weights at the end), the
target-L0 controller, firing statistics, bf16 autocast with float32 master weights,
atomic checkpoints with exact resume, and data parallelism under torch.distributed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from .checkpoint import load_checkpoint, save_checkpoint
from .data.source import as_source
from .distributed import DistContext
from .sae.base import SparseAutoencoder


@dataclass
class TrainConfig:
    steps: int = 2000
    """Optimiser steps; each reads one global batch."""
    batch_size: int = 4096
    """Tokens per step, summed over all ranks."""
    lr: float = 4e-4
    """Peak Adam learning rate."""
    lr_warmup_fraction: float = 0.02
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay: Literal["linear", "cosine", "none"] = "linear"
    """Shape of the decay to 0 at the last step."""
    lr_decay_start: float = 0.8
    """Fraction of the steps after which the learning rate decays (Anthropic decays over the last 20%)."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of the steps over which the sparsity coefficient rises linearly from 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (β1, β2)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None turns clipping off."""
    seed: int = 0
    """Seeds the order in which the data is read."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """"bfloat16" runs forward and backward under bf16 autocast (master weights stay float32);
    "auto" chooses bf16 on CUDA and on CPUs with native bf16 support."""
    device: str | None = None
    """"cpu", "cuda", "cuda:1", ...; default: cuda if available (the local rank's GPU under torchrun)."""
    normalization_tokens: int = 65_536
    """Tokens sampled before training to estimate the activation scale and to initialise b_dec."""
    l0_controller_gain: float = 0.02
    """target_l0: the coefficient is multiplied by exp(gain · clamp(log((L0+1)/(target+1)), ±1)) every step."""
    log_every: int = 50
    """Steps between log lines (and progress-bar updates)."""
    checkpoint_every: int | None = None
    """Steps between checkpoints when ``out`` is given (default: every 10% of the run)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, "steps must be a positive integer"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be a positive integer"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (0 <= self.lr_warmup_fraction < 1, "lr_warmup_fraction must be in [0, 1)"),
            (0 <= self.lr_decay_start <= 1, "lr_decay_start must be in [0, 1]"),
            (self.lr_decay in ("linear", "cosine", "none"), "lr_decay must be 'linear', 'cosine' or 'none'"),
            (0 <= self.sparsity_warmup_fraction < 1, "sparsity_warmup_fraction must be in [0, 1)"),
            (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas must be two numbers in [0, 1)"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive or None"),
            (self.precision in ("auto", "float32", "bfloat16"), "precision must be 'auto', 'float32' or 'bfloat16'"),
            (self.normalization_tokens >= 1, "normalization_tokens must be positive"),
            (self.l0_controller_gain > 0, "l0_controller_gain must be positive"),
            (self.log_every >= 1, "log_every must be a positive integer"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}.")

    # ---- schedules (functions of the step alone, so resume is exact) ------------------------
    def lr_at(self, step: int) -> float:
        warmup = int(self.lr_warmup_fraction * self.steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        decay_start = int(self.lr_decay_start * self.steps)
        if self.lr_decay == "none" or step < decay_start or decay_start >= self.steps:
            return self.lr
        progress = (step - decay_start) / (self.steps - decay_start)
        if self.lr_decay == "linear":
            return self.lr * (1 - progress)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def sparsity_scale_at(self, step: int) -> float:
        warmup = int(self.sparsity_warmup_fraction * self.steps)
        return 1.0 if step >= warmup else (step + 1) / warmup


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    steps: int
    tokens: int
    activation_scale: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry every log_every steps: step, loss parts, l0, explained_variance, dead_fraction, lr, coefficient."""


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device(ctx: DistContext) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.rank % torch.cuda.device_count())
    return torch.device("cpu")


def train(
    sae: SparseAutoencoder,
    data,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    loggers: Sequence[Callable[[dict[str, float]], None]] = (),
    **options: Any,
) -> TrainResult:
    """Train ``sae`` on ``data`` and return it (in eval mode, reading raw activations).

    data: a [tokens, d_in] tensor, an activation store or its path, a live activation
    stream, or any iterable of [batch, d_in] tensors. options: fields of TrainConfig
    (steps, batch_size, lr, ...). With ``out``, checkpoints go to out/checkpoint and a
    JSONL log to out/train_log.jsonl; a run with a checkpoint there resumes from it
    unless resume=False, which refuses to touch an existing run. ``loggers`` receive every
    log entry on rank 0 (TensorBoard, W&B, ...: see saekit.loggers).
    """
    cfg = TrainConfig(**options)
    source = as_source(data)
    if source.d_in != sae.d_in:
        raise ValueError(
            f"the data has d_in={source.d_in} but the SAE was made for d_in={sae.d_in}; "
            f"create the SAE with d_in={source.d_in} or train it on activations of width {sae.d_in}."
        )
    ctx = DistContext.current()
    device = torch.device(cfg.device) if cfg.device else default_device(ctx)
    use_bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and bf16_supported(device))
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the world size {ctx.world_size}.")

    sae.to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    out = Path(out) if out is not None else None
    checkpoint_dir = out / "checkpoint" if out is not None else None
    log_path = out / "train_log.jsonl" if out is not None else None
    if out is not None and ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    start_step = 0
    if checkpoint_dir is not None and checkpoint_dir.exists():
        if not resume:
            raise FileExistsError(
                f"{out} already holds a training run; pass resume=True to continue it or choose another folder."
            )
        state = load_checkpoint(checkpoint_dir, sae, optimizer)
        _check_resumable(state, cfg, checkpoint_dir)
        start_step, scale = state["step"], state["activation_scale"]
        _truncate_log(log_path, start_step)
    else:
        scale = _prepare(sae, source, cfg, ctx, device)

    target_l0 = sae.cfg.target_l0 if sae.coefficient_name is not None else None
    checkpoint_every = cfg.checkpoint_every or max(1, cfg.steps // 10)
    per_rank = cfg.batch_size // ctx.world_size
    batches = source.batches(cfg.batch_size, seed=cfg.seed, start=start_step, rank=ctx.rank, world_size=ctx.world_size)
    history: list[dict[str, float]] = []
    progress = _progress_bar(cfg, ctx, start_step)
    started = time.perf_counter()

    for step in range(start_step, cfg.steps):
        x = next(batches).to(device, non_blocking=True)
        if x.shape[0] != per_rank:
            raise ValueError(f"the data source gave a batch of {x.shape[0]} rows where {per_rank} were asked for.")
        x = x * scale
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            output = sae.loss(x, sparsity_scale=cfg.sparsity_scale_at(step))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        ctx.average_gradients(sae.parameters())
        sae.before_optimizer_step()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        optimizer.step()
        sae.after_optimizer_step()

        with torch.no_grad():
            active = output.features > 0
            sae.update_firing(ctx.any_(active.any(0)), cfg.batch_size)
            if target_l0 is not None and cfg.sparsity_scale_at(step) == 1.0:
                l0 = ctx.mean_(active.sum(-1).float().mean())
                error = torch.log((l0 + 1) / (target_l0 + 1)).clamp(-1, 1)
                sae.sparsity_coefficient.mul_(torch.exp(cfg.l0_controller_gain * error))

        last = step + 1 == cfg.steps
        if (step + 1) % cfg.log_every == 0 or last:
            entry = _log_entry(step + 1, sae, output, x, active, cfg, ctx)
            history.append(entry)
            if ctx.is_main and log_path is not None:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            if ctx.is_main:
                for logger in loggers:
                    logger(entry)
            if progress is not None:
                progress.set_postfix(loss=f"{entry['loss']:.4g}", L0=f"{entry['l0']:.1f}", EV=f"{entry['explained_variance']:.3f}")
        if progress is not None:
            progress.update(1)
        if checkpoint_dir is not None and ((step + 1) % checkpoint_every == 0 or last):
            if ctx.is_main:
                state = {"step": step + 1, "activation_scale": scale, "train_config": _jsonable_config(cfg)}
                save_checkpoint(checkpoint_dir, sae, optimizer, state)
            ctx.barrier()

    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - started
    sae.fold_activation_scale(scale)
    sae.cfg.provenance.update(
        steps=cfg.steps, tokens=cfg.steps * cfg.batch_size, seed=cfg.seed, lr=cfg.lr, world_size=ctx.world_size,
        precision="bfloat16" if use_bf16 else "float32",
    )
    sae.eval()
    return TrainResult(sae, cfg.steps, cfg.steps * cfg.batch_size, scale, seconds, history)


def _prepare(sae: SparseAutoencoder, source, cfg: TrainConfig, ctx: DistContext, device: torch.device) -> float:
    """Before the first step: undo a folded scale (continued training), estimate the
    activation scale c with E‖c·x‖ = √d_in over all ranks, start b_dec at the data mean."""
    if sae.cfg.activation_scale != 1.0:
        previous = sae.cfg.activation_scale
        sae.fold_activation_scale(1.0 / previous)
        sae.cfg.activation_scale = 1.0
        return previous
    sample = _sample(source, cfg, ctx).to(device)
    if sae.cfg.normalize_activations == "expected_norm":
        norms = torch.stack([sample.norm(dim=-1).sum(), torch.tensor(float(sample.shape[0]), device=device)])
        ctx.sum_(norms)
        mean_norm = float(norms[0] / norms[1])
        if not math.isfinite(mean_norm) or mean_norm == 0:
            raise ValueError(f"the activations' mean norm is {mean_norm}; they cannot be normalised (all zero or not finite?).")
        scale = math.sqrt(sae.d_in) / mean_norm
    else:
        scale = 1.0
    mean = ctx.mean_(sample.mean(0) * scale)
    sae.init_b_dec(mean)
    return scale


def _sample(source, cfg: TrainConfig, ctx: DistContext) -> Tensor:
    """About normalization_tokens rows, read with a seed the training order does not use."""
    rows, got = [], 0
    for batch in source.batches(cfg.batch_size, seed=cfg.seed + 7919, rank=ctx.rank, world_size=ctx.world_size):
        rows.append(batch)
        got += batch.shape[0] * ctx.world_size
        if got >= cfg.normalization_tokens:
            break
    return torch.cat(rows).float()


@torch.no_grad()
def _log_entry(step, sae, output, x, active, cfg: TrainConfig, ctx: DistContext) -> dict[str, float]:
    residual = (output.x_hat.float() - x.float()).pow(2).sum()
    total = (x.float() - x.float().mean(0)).pow(2).sum()
    stats = torch.stack([output.loss.detach().float(), residual, total, active.sum(-1).float().mean()])
    stats = ctx.mean_(stats)
    entry = {
        "step": step,
        "loss": float(stats[0]),
        "l0": float(stats[3]),
        "explained_variance": float(1 - stats[1] / stats[2]),
        "dead_fraction": float(sae.dead_mask().float().mean()),
        "lr": cfg.lr_at(step - 1),
    }
    for name, value in output.parts.items():
        entry[name] = float(value.detach())
    if hasattr(sae, "sparsity_coefficient"):
        entry["coefficient"] = float(sae.sparsity_coefficient)
    return entry


def _progress_bar(cfg: TrainConfig, ctx: DistContext, start: int):
    if not (cfg.progress and ctx.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _jsonable_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    saved = state.get("train_config", {})
    for name in ("batch_size", "seed", "steps"):
        if saved.get(name) != getattr(cfg, name):
            raise ValueError(
                f"the checkpoint at {path} was made with {name}={saved.get(name)!r} but this run asks for "
                f"{name}={getattr(cfg, name)!r}; resume with the same {name}, or start a new run in another folder."
            )


def _truncate_log(log_path: Path | None, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if log_path is None or not log_path.exists():
        return
    kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    from .atomic import atomic_write_text

    atomic_write_text(log_path, "".join(line + "\n" for line in kept))
