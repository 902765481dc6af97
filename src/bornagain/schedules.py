"""Learning-rate schedules as plain functions of the epoch (multipliers of the base lr)."""

from __future__ import annotations

import math


def milestone_epochs(epochs: int, milestones: tuple[float, ...]) -> list[int]:
    """Fractions of the run -> epoch numbers: 200 epochs, (0.3, 0.6, 0.8) -> [60, 120, 160]."""
    return [int(round(f * epochs)) for f in milestones]


def step_factor(epoch: int, epochs: int, milestones: tuple[float, ...], gamma: float) -> float:
    """Wide-ResNet step schedule: lr * gamma^(number of milestones passed) during ``epoch`` (0-based)."""
    return gamma ** sum(epoch >= m for m in milestone_epochs(epochs, milestones))


def cosine_factor(epoch: int, epochs: int) -> float:
    """Cosine annealing from 1 to 0 over the run, evaluated at the start of ``epoch``."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_factor(epoch: int, *, epochs: int, schedule: str, milestones: tuple[float, ...] = (0.3, 0.6, 0.8),
              gamma: float = 0.2, warmup_epochs: int = 0) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based), with optional linear warmup."""
    if schedule == "step":
        factor = step_factor(epoch, epochs, milestones, gamma)
    elif schedule == "cosine":
        factor = cosine_factor(epoch, epochs)
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use step or cosine")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        factor *= (epoch + 1) / (warmup_epochs + 1)
    return factor
