"""What every pipeline does the same way with the shared training section (config.TrainingConfig)."""

from __future__ import annotations

import torch

from bornagain.config import TrainingConfig
from bornagain.engine.device import resolve_device
from bornagain.engine.distributed import DistInfo, init_distributed
from bornagain.engine.trainer import EngineSettings


def start_process(train: TrainingConfig) -> tuple[torch.device, DistInfo]:
    """Threads, device and (under torchrun) the process group, in that order, from `train.*`."""
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    device = resolve_device(train.device)
    return device, init_distributed(device.type)


def engine_settings(train: TrainingConfig, device: torch.device, *, seed: int, max_grad_norm: float = 0.0,
                    log_every_steps: int = 0) -> EngineSettings:
    """The engine's settings of one run: the shared section plus what the pipeline decides (seed, clipping,
    step records)."""
    return EngineSettings(device=device, precision=train.precision, seed=seed, max_grad_norm=max_grad_norm,
                          checkpoint_every_steps=train.checkpoint_every_steps, log_every_steps=log_every_steps,
                          progress=train.progress, tensorboard=train.tensorboard)
