"""torch.distributed for saekit: starting it under ``torchrun``, and the few collective
operations the trainer needs, as no-ops outside it.

Training under ``torchrun`` is data-parallel: each rank computes the loss on its slice of
the global batch, gradients are averaged with one all-reduce, and every statistic that
steers training (firing, L0 for the controller, the activation scale) is reduced to its
global value first, so that W ranks with batch B/W follow the same trajectory as one
process with batch B. Rank 0 alone reads and writes checkpoints and logs; the others
receive its state by broadcast, so they need not see its disk.

A rank that dies or stalls makes every collective on the others fail — at once when its
connection drops, otherwise after the process group's timeout — and the failure is
raised as a ``DistributedError`` that says what happened and how to resume.

    ctx = init_distributed_from_env()      # reads RANK, WORLD_SIZE, LOCAL_RANK (torchrun)
    try:
        train(sae, store, out=run, ...)    # finds the process group by itself
    finally:
        shutdown()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective waits for a silent rank before failing (torch's own default).
A rank that *dies* is noticed sooner: its dropped connection fails the collective."""
TIMEOUT_ENV = "SAEKIT_DIST_TIMEOUT"
"""Environment variable that overrides DEFAULT_TIMEOUT_S (seconds)."""


class DistributedError(RuntimeError):
    """A collective operation failed: another rank died, stalled past the timeout, or
    disagreed about what to do."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """The initialised default process group, or a single process when there is none."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _collective(self, what: str, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except RuntimeError as error:  # DistBackendError, gloo/nccl errors, timeouts
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the {what} across ranks failed ({str(error).strip()[:300]}). "
                "Another rank has most likely died or stalled past the process-group timeout "
                f"(${TIMEOUT_ENV}); its own log holds the first error. Run the same command again to resume "
                "from the last checkpoint."
            ) from error

    def mean_(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            self._collective("mean", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def sum_(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            self._collective("sum", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_(self, mask: Tensor) -> Tensor:
        """Element-wise logical or across ranks of a bool tensor."""
        if not self.enabled:
            return mask
        as_int = mask.to(torch.int32)
        self._collective("firing statistics", dist.all_reduce, as_int, op=dist.ReduceOp.MAX)
        return as_int.bool()

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """Every rank's rows of ``tensor`` (the same shape on each), concatenated in rank order
        (an all-reduce of zero-padded slots: exact, and the collective the rest uses)."""
        if not self.enabled:
            return tensor
        n = tensor.shape[0]
        gathered = tensor.new_zeros((self.world_size * n, *tensor.shape[1:]))
        gathered[self.rank * n : (self.rank + 1) * n] = tensor
        self._collective("gather", dist.all_reduce, gathered, op=dist.ReduceOp.SUM)
        return gathered

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``tensor`` on every rank with rank ``src``'s."""
        if self.enabled:
            self._collective("broadcast", dist.broadcast, tensor, src=src)
        return tensor

    def broadcast_tensors_(self, tensors: Iterable[Tensor], src: int = 0) -> None:
        """Broadcast tensors of one device in place, as few messages as dtypes (flattened together)."""
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = self.broadcast_(torch.cat([t.detach().reshape(-1) for t in group]), src)
            offset = 0
            with torch.no_grad():
                for t in group:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()

    def broadcast_module_(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of ``module`` from rank ``src`` (DDP's start)."""
        self.broadcast_tensors_([*module.parameters(), *module.buffers()], src)

    def broadcast_adam_state_(self, optimizer: torch.optim.Optimizer, src: int = 0) -> None:
        """Adam's moments and step counts from rank ``src``; ranks without them (they did
        not load the checkpoint) get tensors of the right shapes first."""
        if not self.enabled:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        device = params[0].device
        has = torch.tensor(
            [p in optimizer.state and len(optimizer.state[p]) > 0 for p in params], dtype=torch.uint8, device=device
        )
        self.broadcast_(has, src)
        moments, steps = [], []
        for p, present in zip(params, has.tolist()):
            if not present:
                optimizer.state.pop(p, None)
                continue
            state = optimizer.state[p]
            if "exp_avg" not in state:
                step_device = p.device if optimizer.defaults.get("fused") else "cpu"
                state.update(
                    step=torch.tensor(0.0, device=step_device),
                    exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p),
                )
            moments += [state["exp_avg"], state["exp_avg_sq"]]
            steps.append(state["step"])
        self.broadcast_tensors_(moments, src)
        if steps:  # step counts may live on the CPU; nccl broadcasts from the GPU
            flat = self.broadcast_(torch.stack([s.reshape(()).float().to(device) for s in steps]), src)
            for s, value in zip(steps, flat):
                s.copy_(value)

    def share_work(
        self,
        compute: Callable[[int], Tensor],
        items: Sequence[int],
        rows: Sequence[int],
        *,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> list[Tensor]:
        """[compute(i) for i in items] on every rank, each rank computing every W-th item only
        (items[rank::W]) and the ranks exchanging the results with one all-gather.
        compute(items[j]) must return [rows[j], width] of ``dtype`` on ``device``."""
        if not self.enabled:
            return [compute(item) for item in items]
        w = self.world_size
        sizes = [sum(rows[r::w]) for r in range(w)]
        local = torch.empty(max(sizes), width, dtype=dtype, device=device)
        offset = 0
        for item, n in zip(items[self.rank :: w], rows[self.rank :: w]):
            value = compute(item)
            if value.shape != (n, width):
                raise ValueError(f"item {item} gave a tensor of shape {tuple(value.shape)}, not ({n}, {width}).")
            local[offset : offset + n] = value
            offset += n
        gathered = [torch.empty_like(local) for _ in range(w)]
        self._collective("exchange of computed activations", dist.all_gather, gathered, local)
        results: list[Tensor] = [local] * len(items)
        for r in range(w):
            offset = 0
            for j in range(r, len(items), w):
                results[j] = gathered[r][offset : offset + rows[j]]
                offset += rows[j]
        return results

    def average_gradients(self, parameters) -> None:
        """One all-reduce over all gradients flattened together (fewer, larger messages)."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective("gradient all-reduce", dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.enabled:
            self._collective("barrier", dist.barrier)

    def agree(self, value: int, what: str) -> None:
        """Raise unless every rank passes the same integer (cheap guard before lockstep work)."""
        if not self.enabled:
            return
        pair = torch.tensor([value, -value], dtype=torch.int64, device=collective_device())
        self._collective(what, dist.all_reduce, pair, op=dist.ReduceOp.MAX)
        if int(pair[0]) != -int(pair[1]):
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the ranks disagree on {what} "
                f"(between {-int(pair[1])} and {int(pair[0])}; this rank has {value}). "
                "Every rank must run the same command with the same data and options."
            )

    def broadcast_flag(self, value: bool, src: int = 0) -> bool:
        """Rank ``src``'s ``value`` on every rank (itself outside a process group)."""
        if not self.enabled:
            return bool(value)
        flag = torch.tensor([int(bool(value))], dtype=torch.int64, device=collective_device())
        self.broadcast_(flag, src)
        return bool(flag.item())

    def raise_together(self, error: BaseException | None, what: str) -> None:
        """A barrier that carries failure: if any rank failed (``error`` is not None there),
        every rank raises — the failed one its own error — instead of the others waiting
        for it until the timeout."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        failed = torch.tensor([error is not None], dtype=torch.int64, device=collective_device())
        self._collective(what, dist.all_reduce, failed, op=dist.ReduceOp.SUM)
        if error is not None:
            raise error
        if int(failed) > 0:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed on another rank; its log says why."
            )


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed_from_env(*, backend: str | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    With RANK and WORLD_SIZE set (torchrun sets them, with MASTER_ADDR, MASTER_PORT and
    LOCAL_RANK): initialise the default process group — nccl when CUDA is available,
    gloo otherwise, unless ``backend`` says — and, with CUDA, make GPU LOCAL_RANK this
    process's device. Without them: a single process, nothing initialised. Calling it
    again when the group exists returns it.

    timeout_s: how long a collective waits for a silent rank before failing; default
    $SAEKIT_DIST_TIMEOUT, else 1800 s. (With nccl, torch's watchdog enforces it.)
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext.current()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("RANK and WORLD_SIZE are set but this torch build has no torch.distributed support.")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    if timeout_s <= 0:
        raise ValueError(f"the distributed timeout must be positive, got {timeout_s} s (${TIMEOUT_ENV}).")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "backend 'nccl' needs CUDA, which this process does not see; use backend='gloo' on CPUs."
            )
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc-per-node)."
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world_size)


def shutdown() -> None:
    """Leave the process group, if one was initialised (call once, at the end, on every rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    """This process's index on its node: LOCAL_RANK under torchrun, else the global rank."""
    return int(os.environ.get("LOCAL_RANK", DistContext.current().rank))
