"""Optional metric sinks for the trainer: TensorBoard and Weights & Biases.

Each is imported only when asked for, so neither is a dependency of saekit.
W&B works without network with WANDB_MODE=offline (runs sync later with `wandb sync`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Logger = Callable[[dict[str, float]], None]


def tensorboard_logger(log_dir: str | Path) -> Logger:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: pip install 'saekit[tensorboard]'."
        ) from error
    writer = SummaryWriter(log_dir=str(log_dir))

    def log(entry: dict[str, float]) -> None:
        for name, value in entry.items():
            if name != "step":
                writer.add_scalar(f"train/{name}", value, entry["step"])
        writer.flush()

    return log


def wandb_logger(project: str, config: dict[str, Any], run_dir: str | Path) -> Logger:
    try:
        import wandb
    except ImportError as error:
        raise ImportError("W&B logging needs the wandb package: pip install 'saekit[wandb]'.") from error
    run = wandb.init(project=project, config=config, dir=str(run_dir), reinit=True)

    def log(entry: dict[str, float]) -> None:
        run.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=int(entry["step"]))

    return log
