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


def triangle_factor(step: int, total_steps: int, *, start: float, peak_at: float, end: float) -> float:
    """One-cycle (triangular) schedule, per optimiser step: linear from ``start`` at step 0 to 1 at step
    round(peak_at * T), then linear to ``end`` at step T (T = ``total_steps``; airbench94: 0.2, 0.23, 0.07).

        f(s) = start + (1 - start) s / P            for s <= P = round(peak_at T)
        f(s) = 1 + (end - 1) (s - P) / (T - P)      for P < s <= T
    """
    peak = int(round(peak_at * total_steps))
    step = min(max(step, 0), total_steps)
    if step <= peak:
        return start + (1.0 - start) * (step / peak if peak > 0 else 1.0)
    return 1.0 + (end - 1.0) * (step - peak) / (total_steps - peak)


def lr_factor(epoch: int, *, epochs: int, schedule: str, milestones: tuple[float, ...] = (0.3, 0.6, 0.8),
              gamma: float = 0.2, warmup_epochs: int = 0) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based), with optional linear warmup."""
    if schedule == "step":
        factor = step_factor(epoch, epochs, milestones, gamma)
    elif schedule == "cosine":
        factor = cosine_factor(epoch, epochs)
    elif schedule == "triangle":
        raise ValueError("the triangle schedule is per step: use lr_factor_at_step")
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use step, cosine or triangle")
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
                      warmup_steps: int = 0, triangle: tuple[float, float, float] = (0.2, 0.23, 0.07)) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based): the per-epoch schedule of the
    step's epoch (:func:`lr_factor`) times a per-step linear warm-up (:func:`warmup_factor`).
    With ``warmup_steps=0`` it is constant within an epoch, exactly the per-epoch schedule. The ``triangle``
    schedule is per step (:func:`triangle_factor` with ``triangle`` = (start, peak_at, end)), and its warm-up is
    its own rising side (a further warm-up multiplies it)."""
    if schedule == "triangle":
        start, peak_at, end = triangle
        return triangle_factor(step, steps_per_epoch * epochs, start=start, peak_at=peak_at, end=end) * \
            warmup_factor(step, warmup_steps)
    epoch = step // steps_per_epoch
    return lr_factor(epoch, epochs=epochs, schedule=schedule, milestones=milestones, gamma=gamma,
                     warmup_epochs=warmup_epochs) * warmup_factor(step, warmup_steps)
