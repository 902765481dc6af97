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


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up over the first ``warmup_steps`` optimiser steps (0-based ``step``):
    (step + 1) / warmup_steps, then 1. The first update already moves (no step at lr 0)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def lr_factor_at_step(step: int, *, steps_per_epoch: int, epochs: int, schedule: str,
                      milestones: tuple[float, ...] = (0.3, 0.6, 0.8), gamma: float = 0.2, warmup_epochs: int = 0,
                      warmup_steps: int = 0) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based): the per-epoch schedule of the
    step's epoch (:func:`lr_factor`) times a per-step linear warm-up (:func:`warmup_factor`).
    With ``warmup_steps=0`` it is constant within an epoch, exactly the per-epoch schedule."""
    epoch = step // steps_per_epoch
    return lr_factor(epoch, epochs=epochs, schedule=schedule, milestones=milestones, gamma=gamma,
                     warmup_epochs=warmup_epochs) * warmup_factor(step, warmup_steps)
