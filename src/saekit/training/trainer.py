"""The trainer: one loop for every architecture.

It asks an SAE for ``loss(x, sparsity_scale=...)`` and calls its ``before_optimizer_step`` /
``after_optimizer_step`` hooks; it never asks which architecture it trains. Around that:
Adam, learning-rate warm-up and decay, sparsity-coefficient warm-up, gradient clipping,
activation normalisation (estimated first, folded into the weights at the end), the
target-L0 controller, firing statistics, bf16 autocast with float32 master weights,
atomic checkpoints with exact resume, and data parallelism under torch.distributed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._runtime.allocator import keep_freed_memory
from .._runtime.checksums import sha256_bytes
from .._runtime.distributed import DistContext, DistributedError
from .._runtime.errors import FolderError, NonFiniteError, UsageError
from .._runtime.folder import OutputFolder
from .._runtime.precision import bf16_is_fast
from ..data.pairs import Pair, as_pair, check_fits
from ..data.source import as_source, describe_nonfinite, fingerprint_of
from ..sae.base import SparseAutoencoder
from ..sae.registry import config_identity
from .checkpoint import LOG_FILE, load_checkpoint, read_log, save_checkpoint
from .config import TrainConfig
from .controller import MAX_SHIFT, L0Controller, firing_count, fit_stride, margin_counts
from .controller import STATE as CONTROLLER_STATE
from .prepare import prepare

SETTLE_ROWS = 8192
"""Rows of the last global batch (a stride of it) that ``settle_for_inference`` reads."""


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    steps: int
    tokens: int
    activation_scale: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry every log_every steps: step, loss parts, l0, explained_variance, dead_fraction, lr, coefficient."""


def default_device(ctx: DistContext) -> torch.device:
    if torch.cuda.is_available():
        # Under torchrun, the node-local rank picks the GPU (init_distributed_from_env has set it).
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _device(name: str | None, ctx: DistContext) -> torch.device:
    """The device to train on, checked to exist on this machine."""
    if name is None:
        return default_device(ctx)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {name!r}: this machine has no CUDA GPU that torch can use; train on cpu, "
                "or install a CUDA build of torch."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r}: MPS is not available here; train on cpu.")
    elif device.type not in ("cpu", "cuda", "mps") and not hasattr(torch, device.type):
        raise UsageError(f"device {name!r} is not a device this torch build has.")
    return device


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
    unless resume=False, which refuses to touch an existing run. ``out`` follows saekit's
    folder contract (_runtime/folder.py): it is locked while training, and a run there
    made with other settings, another SAE or other data is refused, never resumed.

    Under an initialised torch.distributed process group (``torchrun``) the run is
    data-parallel: every rank calls train() alike and reads its share of each global batch.
    ``ctx=DistContext()`` trains on this process alone instead (each rank its own SAE).
    ``loggers`` receive every log entry on rank 0 (TensorBoard, W&B: see saekit.loggers).
    """
    trainer = Trainer(sae, data, out=out, resume=resume, ctx=ctx, loggers=loggers, **options)
    try:
        batches = trainer.batches()
        while not trainer.done:
            trainer.step(next(batches))
        return trainer.finish()
    finally:
        trainer.close()


def normalize_identity(saved: dict) -> dict:
    """A training run's identity written by an earlier saekit, as today's would be written."""
    return {**saved, "sae": config_identity(saved["sae"])}


def training_folder(out: Path, identity: dict, owns: Sequence[str]) -> OutputFolder:
    """The output folder of a training run (unopened): its kind, identity and the
    normalisation of identities saved by an earlier saekit, for whoever writes into it."""
    return OutputFolder(out, kind="training", identity=identity, owns=owns, normalize=normalize_identity)


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
        cfg = self.cfg = TrainConfig(**options).for_sae(sae)
        source = self.source = as_source(data)
        check_fits(source, sae)
        ctx = self.ctx = ctx if ctx is not None else DistContext.current()
        device = self.device = _device(cfg.device, ctx)
        self.use_bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and bf16_is_fast(device))
        if cfg.batch_size % ctx.world_size:
            raise UsageError(f"batch_size={cfg.batch_size} must be divisible by the world size {ctx.world_size}.")

        if device.type == "cpu":
            keep_freed_memory()  # a step's large temporaries reuse the last step's pages
        self.sae = sae
        self.folder: OutputFolder | None = None
        self.out = Path(out) if out is not None else None
        self.checkpoint_dir = self.out / "checkpoint" if self.out is not None else None
        self.log_path = self.out / LOG_FILE if self.out is not None else None
        self.identity_at_start = self.identity() if self.out is not None else None
        if self.out is not None and ctx.is_main:
            self.folder = training_folder(self.out, self.identity_at_start, ("checkpoint", LOG_FILE))
            self.folder.open()
            if self.folder.resumed and not resume and self.checkpoint_dir.exists():
                self.folder.close()
                raise FolderError(
                    f"{self.out} already holds a training run; pass resume=True to continue it or "
                    "choose another folder."
                )
            self.folder.output(LOG_FILE)
        try:
            sae.to(device).train()
            # fused: one kernel per parameter for the whole update (CPU and CUDA), not a dozen passes.
            self.optimizer = torch.optim.Adam(
                sae.optimizer_groups(cfg.encoder_lr_scale, cfg.decoder_lr_scale),
                lr=cfg.lr,
                betas=cfg.adam_betas,
                fused=device.type in ("cpu", "cuda"),
            )
            self.step_index, (self.scale, self.target_scale), controller_state = self._start()
        except BaseException:
            self.close()
            raise
        self.target_l0 = sae.cfg.target_l0 if sae.coefficient_name is not None else None
        self.controller = None
        if self.target_l0 is not None:
            self.controller = L0Controller(self.target_l0, cfg.controller_gain(), device)
            self.controller.load(controller_state)
        self.checkpoint_every = cfg.checkpoint_every or max(1, cfg.steps // 10)
        self.per_rank = cfg.batch_size // ctx.world_size
        self.history: list[dict[str, float]] = []
        self.progress = _progress_bar(cfg, ctx, self.step_index)
        self.started = time.perf_counter()
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)  # deferred non-finite check (GPU)
        self._last_checkpoint = self.step_index

    def identity(self) -> dict[str, Any]:
        """What this run's result depends on: the SAE's configuration and initial weights,
        the trainer's settings and the data."""
        sae_cfg = config_identity(self.sae.cfg.to_dict())
        weights = b"".join(
            t.detach().float().cpu().contiguous().numpy().tobytes()
            for _, t in sorted(self.sae.state_for_save().items())
        )
        return {
            "sae": sae_cfg,
            "initial_weights": sha256_bytes(weights),
            "train": self.cfg.identity(),
            "data": fingerprint_of(self.source),
        }

    def close(self) -> None:
        """Release the output folder (finish does; call it after a failure)."""
        if self.folder is not None:
            self.folder.close()

    def _start(self) -> tuple[int, tuple[float, float], dict[str, float]]:
        """(first step, (input and target scales), the L0 controller's state): from the
        checkpoint in ``out`` if there is one, else after estimating the scale. Rank 0 alone
        reads the checkpoint and sends what it holds to the other ranks, which therefore need
        not see its disk."""
        ctx, sae = self.ctx, self.sae
        resumed, step, scale, target_scale, control, error = False, 0, 1.0, 1.0, {}, None
        if ctx.is_main and self.checkpoint_dir is not None:
            try:
                state = load_checkpoint(self.checkpoint_dir, sae, self.optimizer, log=self.log_path)
                if state is not None:
                    resumed, step, scale = True, state["step"], state["activation_scale"]
                    target_scale = state.get("target_scale", scale)
                    control = state.get("l0_controller", {})
                    _truncate_log(self.log_path, step)
            except Exception as caught:  # re-raised below, once the other ranks know to stop
                error = caught
        if ctx.enabled:
            values = [control.get(name, float("nan")) for name in CONTROLLER_STATE]
            decision = torch.tensor(
                [error is not None, resumed, step, scale, target_scale, *values],
                dtype=torch.float64,
                device=self.device,
            )
            ctx.broadcast_(decision)
            failed, resumed, step = bool(decision[0]), bool(decision[1]), int(decision[2])
            scale, target_scale = float(decision[3]), float(decision[4])
            control = {name: float(v) for name, v in zip(CONTROLLER_STATE, decision[5:].tolist()) if v == v}
            if failed and error is None:
                raise DistributedError(
                    f"rank {ctx.rank}: rank 0 could not resume the run in {self.out}; its log says why."
                )
        if error is not None:
            raise error
        if resumed:
            # The checkpoint holds the SAE before its scale is folded in.
            sae.cfg.activation_scale = sae.cfg.target_scale = 1.0
            ctx.broadcast_module_(sae)
            ctx.broadcast_adam_state_(self.optimizer)
            return step, (scale, target_scale), control
        ctx.broadcast_module_(sae)  # every rank starts from rank 0's weights, as DDP does
        return 0, prepare(sae, self.source, self.cfg, ctx, self.device), {}

    def _sparsity_scale(self, step: int) -> float:
        """The sparsity warm-up's factor; none with a target L0, where the SAE was calibrated
        to start at its target and the controller sets the coefficient from the first step."""
        return 1.0 if self.target_l0 is not None else self.cfg.sparsity_scale_at(step)

    @property
    def done(self) -> bool:
        return self.step_index >= self.cfg.steps

    def batches(self) -> Iterator[Tensor]:
        """This rank's share of the global batches still to train on."""
        cfg, ctx = self.cfg, self.ctx
        return self.source.batches(
            cfg.batch_size, seed=cfg.seed, start=self.step_index, rank=ctx.rank, world_size=ctx.world_size
        )

    def step(self, batch: Tensor | Pair) -> None:
        """One optimiser step on a batch of raw activations: x [batch_size // world_size,
        d_in], or a Pair (x, y) of a transcoder's input and target rows."""
        cfg, ctx, sae, optimizer, step = self.cfg, self.ctx, self.sae, self.optimizer, self.step_index
        pair = as_pair(batch).to(self.device)
        if pair.x.shape[0] != self.per_rank:
            raise UsageError(
                f"the data source gave a batch of {pair.x.shape[0]} rows where {self.per_rank} were asked for."
            )
        x = pair.x * self.scale
        target = x if pair.same and self.target_scale == self.scale else pair.y * self.target_scale
        finite = torch.isfinite(x).all()
        if target is not x:  # an SAE's target is its input: one pass over it is enough
            finite = finite & torch.isfinite(target).all()
        self._check_finite(finite, step, "batch")
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step) * group.get("lr_scale", 1.0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            output = sae.loss(x, target=target, sparsity_scale=self._sparsity_scale(step))
        self._check_finite(torch.isfinite(output.loss.detach()), step, "loss", output)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        ctx.average_gradients(sae.parameters())
        balance = sae.penalty_balance() if self.controller is not None else None
        sae.before_optimizer_step()
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
            self._check_finite(torch.isfinite(norm), step, "gradient")
        fit_rows = None
        if self.controller is not None:
            with torch.no_grad():  # the fit rows' firing pairs before the step (see L0Controller.update)
                fit_rows = x[:: fit_stride(cfg.batch_size)]
                before = firing_count(sae.firing_margins(fit_rows, 0.0))
        optimizer.step()
        sae.after_optimizer_step()

        with torch.no_grad():
            sae.update_firing(ctx.any_(output.fired), cfg.batch_size)
            l0 = ctx.mean_(output.l0.float().clone())
            sae.observe_l0(l0)
            if self.controller is not None:
                counts = ctx.sum_(torch.cat([margin_counts(sae.firing_margins(fit_rows, -MAX_SHIFT)), before.view(1)]))
                if balance is not None:
                    balance = ctx.sum_(balance.clone())
                shift, factor = self.controller.update(
                    l0, counts[:-1], fit_rows.shape[0] * ctx.world_size, before=counts[-1],
                    coefficient=sae.sparsity_coefficient, balance=balance,
                )  # fmt: skip
                # Raise only the thresholds of features that fired: the others add nothing to
                # L0, get no gradient to pull them back, and would be pushed out for good.
                sae.shift_thresholds(torch.where((sae.tokens_since_fired == 0) | (shift < 0), shift, 0.0))
                sae.sparsity_coefficient.mul_(factor)

            if step + 1 == cfg.steps:
                sae.settle_for_inference(ctx.gather_rows(x[:: max(1, cfg.batch_size // SETTLE_ROWS)]))

        self.step_index = step = step + 1
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            self._raise_deferred()
            entry = _log_entry(step, sae, output, target, cfg, ctx)
            self.history.append(entry)
            if ctx.is_main and self.log_path is not None:
                with open(self.log_path, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            if ctx.is_main:
                for logger in self.loggers:
                    logger(entry)
            if self.progress is not None:
                self.progress.set_postfix(
                    loss=f"{entry['loss']:.4g}", L0=f"{entry['l0']:.1f}", EV=f"{entry['explained_variance']:.3f}"
                )
        if self.progress is not None:
            self.progress.update(1)
        if self.checkpoint_dir is not None and (step % self.checkpoint_every == 0 or last):
            self._raise_deferred()
            self._check_parameters(step)
            if ctx.is_main:
                state = {
                    "step": step,
                    "activation_scale": self.scale,
                    "target_scale": self.target_scale,
                    **({"l0_controller": self.controller.state()} if self.controller else {}),
                    "train_config": _jsonable_config(cfg),
                }
                self.folder.output("checkpoint")
                save_checkpoint(self.checkpoint_dir, sae, optimizer, state)
                self.folder.finished("checkpoint")
            self._last_checkpoint = step
            ctx.barrier()

    # ---- non-finite values stop training at once, naming the culprit --------------------------
    def _check_finite(self, ok: Tensor, step: int, what: str, output=None) -> None:
        """Stop at step ``step`` if ``ok`` is false: at once on CPU; on a GPU the first bad
        step is kept on the device and raised at the next log or checkpoint (no wait per step)."""
        if ok.device.type != "cpu":
            code = {"batch": 0, "loss": 1, "gradient": 2}[what]
            self._first_bad = torch.where((self._first_bad < 0) & ~ok, step * 4 + code, self._first_bad)
            return
        if not bool(ok):
            self._raise_nonfinite(step, what, output)

    def _raise_deferred(self) -> None:
        if self._first_bad.device.type == "cpu":
            return
        bad = int(self._first_bad)
        if bad >= 0:
            self._raise_nonfinite(bad // 4, ("batch", "loss", "gradient")[bad % 4], None)

    def _raise_nonfinite(self, step: int, what: str, output) -> None:
        kept = (
            f"the last checkpoint (step {self._last_checkpoint}) is intact"
            if self.checkpoint_dir is not None and self._last_checkpoint
            else "nothing was saved"
        )
        if what == "batch":
            where = describe_nonfinite(self.source)
            raise NonFiniteError(
                f"step {step + 1}: the training batch holds NaN or infinite activations"
                f"{' (' + where + ')' if where else ''}; {kept}. Harvest the data again or remove "
                "those rows."
            )
        parts = ""
        if output is not None:
            parts = " (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in output.parts.items()) + ")"
        raise NonFiniteError(
            f"step {step + 1}: the {what} became non-finite{parts} on a finite batch: training diverged; {kept}. "
            f"Lower the learning rate (lr={self.cfg.lr:g}), keep gradient clipping on (grad_clip), or train in "
            "float32 (precision=float32)."
        )

    def _check_parameters(self, step: int) -> None:
        for name, tensor in self.sae.named_parameters():
            if not bool(torch.isfinite(tensor).all()):
                raise NonFiniteError(
                    f"step {step}: parameter {name} holds NaN or infinite values; nothing was saved "
                    f"at this step (the last checkpoint, step {self._last_checkpoint}, is intact). "
                    f"Lower the learning rate (lr={self.cfg.lr:g})."
                )

    def finish(self) -> TrainResult:
        """After the last step: fold the activation scale into the weights, record provenance."""
        cfg, sae = self.cfg, self.sae
        if not self.done:
            raise RuntimeError(f"finish() called after {self.step_index} of {cfg.steps} steps.")
        if self.progress is not None:
            self.progress.close()
        seconds = time.perf_counter() - self.started
        self._raise_deferred()
        self._check_parameters(self.step_index)
        sae.fold_activation_scale(self.scale, self.target_scale)
        sae.cfg.provenance.update(
            steps=cfg.steps,
            tokens=cfg.steps * cfg.batch_size,
            seed=cfg.seed,
            lr=cfg.lr,
            world_size=self.ctx.world_size,
            precision="bfloat16" if self.use_bf16 else "float32",
        )
        sae.eval()
        if self.folder is not None and self.log_path.exists():
            self.folder.finished(LOG_FILE)
        self.close()
        return TrainResult(sae, cfg.steps, cfg.steps * cfg.batch_size, self.scale, seconds, self.history)


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
    means, (residual, square), column_sums = (
        stats[:n_means] / ctx.world_size,
        stats[n_means : n_means + 2],
        stats[n_means + 2 :],
    )
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
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()}


def _truncate_log(log_path: Path | None, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if log_path is None or not log_path.exists():
        return
    from .._runtime.atomic import atomic_write_text

    kept = [line for line, entry in zip(*read_log(log_path)) if entry["step"] <= step]
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))
