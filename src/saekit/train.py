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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from .allocator import keep_freed_memory
from .checkpoint import load_checkpoint, save_checkpoint
from .data.source import as_source
from .distributed import DistContext, DistributedError
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
        # Under torchrun, the node-local rank picks the GPU (init_distributed_from_env has set it).
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def train(
    sae: SparseAutoencoder,
    data,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    ctx: DistContext | None = None,
    loggers: Sequence[Callable[[dict[str, float]], None]] = (),
    **options: Any,
) -> TrainResult:
    """Train ``sae`` on ``data`` and return it (in eval mode, reading raw activations).

    data: a [tokens, d_in] tensor, an activation store or its path, a live activation
    stream, or any iterable of [batch, d_in] tensors. options: fields of TrainConfig
    (steps, batch_size, lr, ...). With ``out``, checkpoints go to out/checkpoint and a
    JSONL log to out/train_log.jsonl; a run with a checkpoint there resumes from it
    unless resume=False, which refuses to touch an existing run.

    Under an initialised torch.distributed process group (``torchrun``) the run is
    data-parallel: every rank calls train() alike and reads its share of each global batch.
    ``ctx=DistContext()`` trains on this process alone instead (each rank its own SAE).
    ``loggers`` receive every log entry on rank 0 (TensorBoard, W&B: see saekit.loggers).
    """
    trainer = Trainer(sae, data, out=out, resume=resume, ctx=ctx, loggers=loggers, **options)
    batches = trainer.batches()
    while not trainer.done:
        trainer.step(next(batches))
    return trainer.finish()


class Trainer:
    """One SAE's training, a step at a time. ``train`` drives one; ``multi_train`` drives
    several in lockstep from one stream of model activations.

    ``ctx`` is the data-parallel group: by default the initialised process group (or a
    single process); ``DistContext()`` trains on this process alone even under torchrun.
    """

    def __init__(
        self,
        sae: SparseAutoencoder,
        data,
        *,
        out: str | Path | None = None,
        resume: bool = True,
        ctx: DistContext | None = None,
        loggers: Sequence[Callable[[dict[str, float]], None]] = (),
        **options: Any,
    ) -> None:
        self.loggers = list(loggers)
        cfg = self.cfg = TrainConfig(**options)
        source = self.source = as_source(data)
        if source.d_in != sae.d_in:
            raise ValueError(
                f"the data has d_in={source.d_in} but the SAE was made for d_in={sae.d_in}; "
                f"create the SAE with d_in={source.d_in} or train it on activations of width {sae.d_in}."
            )
        ctx = self.ctx = ctx if ctx is not None else DistContext.current()
        device = self.device = torch.device(cfg.device) if cfg.device else default_device(ctx)
        self.use_bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and bf16_supported(device))
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the world size {ctx.world_size}.")

        if device.type == "cpu":
            keep_freed_memory()  # a step's large temporaries reuse the last step's pages
        self.sae = sae
        sae.to(device).train()
        # fused: one kernel per parameter for the whole update (CPU and CUDA), not a dozen passes.
        self.optimizer = torch.optim.Adam(sae.optimizer_groups(), lr=cfg.lr, betas=cfg.adam_betas,
                                          fused=device.type in ("cpu", "cuda"))
        self.out = Path(out) if out is not None else None
        self.checkpoint_dir = self.out / "checkpoint" if self.out is not None else None
        self.log_path = self.out / "train_log.jsonl" if self.out is not None else None
        if self.out is not None and ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        self.step_index, self.scale = self._start(resume)
        self.target_l0 = sae.cfg.target_l0 if sae.coefficient_name is not None else None
        self.checkpoint_every = cfg.checkpoint_every or max(1, cfg.steps // 10)
        self.per_rank = cfg.batch_size // ctx.world_size
        self.history: list[dict[str, float]] = []
        self.progress = _progress_bar(cfg, ctx, self.step_index)
        self.started = time.perf_counter()

    def _start(self, resume: bool) -> tuple[int, float]:
        """(first step, activation scale): from the checkpoint in ``out`` if there is one,
        else after estimating the scale. Rank 0 alone reads the checkpoint and sends what
        it holds to the other ranks, which therefore need not see its disk."""
        ctx, sae = self.ctx, self.sae
        resumed, step, scale, error = False, 0, 1.0, None
        if ctx.is_main and self.checkpoint_dir is not None and self.checkpoint_dir.exists():
            try:
                if not resume:
                    raise FileExistsError(
                        f"{self.out} already holds a training run; pass resume=True to continue it or choose another folder."
                    )
                state = load_checkpoint(self.checkpoint_dir, sae, self.optimizer)
                _check_resumable(state, self.cfg, self.checkpoint_dir)
                resumed, step, scale = True, state["step"], state["activation_scale"]
                _truncate_log(self.log_path, step)
            except Exception as caught:  # re-raised below, once the other ranks know to stop
                error = caught
        if ctx.enabled:
            decision = torch.tensor([error is not None, resumed, step, scale], dtype=torch.float64, device=self.device)
            ctx.broadcast_(decision)
            failed, resumed, step, scale = bool(decision[0]), bool(decision[1]), int(decision[2]), float(decision[3])
            if failed and error is None:
                raise DistributedError(f"rank {ctx.rank}: rank 0 could not resume the run in {self.out}; its log says why.")
        if error is not None:
            raise error
        if resumed:
            # The checkpoint holds the SAE before its scale is folded in.
            sae.cfg.activation_scale = 1.0
            ctx.broadcast_module_(sae)
            ctx.broadcast_adam_state_(self.optimizer)
            return step, scale
        ctx.broadcast_module_(sae)  # every rank starts from rank 0's weights, as DDP does
        return 0, _prepare(sae, self.source, self.cfg, ctx, self.device)

    @property
    def done(self) -> bool:
        return self.step_index >= self.cfg.steps

    def batches(self) -> Iterator[Tensor]:
        """This rank's share of the global batches still to train on."""
        cfg, ctx = self.cfg, self.ctx
        return self.source.batches(cfg.batch_size, seed=cfg.seed, start=self.step_index, rank=ctx.rank,
                                   world_size=ctx.world_size)

    def step(self, x: Tensor) -> None:
        """One optimiser step on x: [batch_size // world_size, d_in] raw activations."""
        cfg, ctx, sae, optimizer, step = self.cfg, self.ctx, self.sae, self.optimizer, self.step_index
        x = x.to(self.device, non_blocking=True)
        if x.shape[0] != self.per_rank:
            raise ValueError(f"the data source gave a batch of {x.shape[0]} rows where {self.per_rank} were asked for.")
        x = x * self.scale
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step) * group.get("lr_scale", 1.0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
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
            sae.update_firing(ctx.any_(output.fired), cfg.batch_size)
            l0 = ctx.mean_(output.l0.float().clone())
            sae.observe_l0(l0)
            if self.target_l0 is not None and cfg.sparsity_scale_at(step) == 1.0:
                error = torch.log((l0 + 1) / (self.target_l0 + 1)).clamp(-1, 1)
                sae.sparsity_coefficient.mul_(torch.exp(cfg.l0_controller_gain * error))

        self.step_index = step = step + 1
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            entry = _log_entry(step, sae, output, x, cfg, ctx)
            self.history.append(entry)
            if ctx.is_main and self.log_path is not None:
                with open(self.log_path, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            if ctx.is_main:
                for logger in self.loggers:
                    logger(entry)
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{entry['loss']:.4g}", L0=f"{entry['l0']:.1f}",
                                          EV=f"{entry['explained_variance']:.3f}")
        if self.progress is not None:
            self.progress.update(1)
        if self.checkpoint_dir is not None and (step % self.checkpoint_every == 0 or last):
            if ctx.is_main:
                state = {"step": step, "activation_scale": self.scale, "train_config": _jsonable_config(cfg)}
                save_checkpoint(self.checkpoint_dir, sae, optimizer, state)
            ctx.barrier()

    def finish(self) -> TrainResult:
        """After the last step: fold the activation scale into the weights, record provenance."""
        cfg, sae = self.cfg, self.sae
        if not self.done:
            raise RuntimeError(f"finish() called after {self.step_index} of {cfg.steps} steps.")
        if self.progress is not None:
            self.progress.close()
        seconds = time.perf_counter() - self.started
        sae.fold_activation_scale(self.scale)
        sae.cfg.provenance.update(
            steps=cfg.steps, tokens=cfg.steps * cfg.batch_size, seed=cfg.seed, lr=cfg.lr, world_size=self.ctx.world_size,
            precision="bfloat16" if self.use_bf16 else "float32",
        )
        sae.eval()
        return TrainResult(sae, cfg.steps, cfg.steps * cfg.batch_size, self.scale, seconds, self.history)


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
def _log_entry(step, sae, output, x, cfg: TrainConfig, ctx: DistContext) -> dict[str, float]:
    """Global numbers: each rank's sums (and means of its equal share) reduced over ranks, in float64."""
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    x64 = x.to(wide)
    names = list(output.parts)
    means = [output.loss.detach(), output.l0, *(output.parts[name].detach() for name in names)]
    sums = [(output.x_hat.to(wide) - x64).pow(2).sum(), x64.pow(2).sum()]
    stats = ctx.sum_(torch.cat([torch.stack([m.to(wide) for m in means] + sums), x64.sum(0)]))
    n_means, n_tokens = len(means), x.shape[0] * ctx.world_size
    means, (residual, square), column_sums = stats[:n_means] / ctx.world_size, stats[n_means : n_means + 2], stats[n_means + 2 :]
    total = square - column_sums.pow(2).sum() / n_tokens  # Σ‖x − x̄‖²
    entry = {
        "step": step,
        "loss": float(means[0]),
        "l0": float(means[1]),
        "explained_variance": float(1 - residual / total),
        "dead_fraction": float(sae.dead_mask().float().mean()),
        "lr": cfg.lr_at(step - 1),
    }
    for name, value in zip(names, means[2:]):
        entry[name] = float(value)
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
