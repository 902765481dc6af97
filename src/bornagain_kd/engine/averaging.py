"""Weight averaging during training: an exponential moving average (EMA) of the weights, or lookahead.

Every ``every`` optimiser steps the average moves toward the live weights:

    avg <- d_t * avg + (1 - d_t) * w,      d_t = decay**every * (t / T)**warmup_power     (warmup_power > 0)
                                           d_t = min(decay, (1 + t) / (10 + t))**every     (warmup_power = 0)

with t the optimiser steps done and T the run's steps. ``decay`` is per optimiser step, so the averaging horizon
(about 1 / (1 - decay) steps) does not change with ``every``. Either warm-up keeps d_t small early, while the
weights move fast and an average of them would be stale (without one, a run of fewer than 1 / (1 - decay) steps
would end near its initial weights): airbench94 uses decay 0.95, every 5, power 3; the second is timm's
(ModelEmaV3's warm-up).

``mode``:
  ema        the average is a shadow copy; the live weights keep training (timm's ModelEmaV3).
  lookahead  after each update the live weights are set to the average: training continues from the slow
             weights (Zhang et al. 2019, "Lookahead optimizer"; airbench94's LookaheadState).

Every floating tensor of the model's state dict is averaged, batch-norm running statistics included (integer
buffers such as num_batches_tracked are the live model's). Evaluation, the final weights (model.safetensors),
the test predictions and so a born-again teacher's predictions come from the average; the checkpoint holds it,
so a resumed run continues exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

MODES = ("off", "ema", "lookahead")


@dataclass(frozen=True)
class AveragingSettings:
    mode: str = "off"
    decay: float = 0.999
    every: int = 1
    warmup_power: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def averaging_decay(step: int, total_steps: int, settings: AveragingSettings) -> float:
    """d_t of the update made after optimiser step ``step`` (1-based count of steps done)."""
    if settings.warmup_power > 0:
        return settings.decay ** settings.every * (min(step, total_steps) / total_steps) ** settings.warmup_power
    return min(settings.decay, (1 + step) / (10 + step)) ** settings.every


class WeightAverage:
    """The running average of ``model``'s floating state (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, settings: AveragingSettings, total_steps: int):
        self.settings, self.total_steps = settings, max(1, total_steps)
        live = model.state_dict()
        self.keys = [k for k, v in live.items() if v.is_floating_point()]
        self.average = [live[k].detach().clone() for k in self.keys]

    def _live(self, model: torch.nn.Module) -> list[torch.Tensor]:
        # state_dict tensors share storage with the parameters and buffers: writing them writes the model
        state = model.state_dict()
        return [state[k] for k in self.keys]

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """Called after optimiser step number ``step`` (1-based): update every ``every`` steps."""
        if step % self.settings.every:
            return
        d = averaging_decay(step, self.total_steps, self.settings)
        live = self._live(model)
        torch._foreach_lerp_(self.average, live, 1.0 - d)  # avg + (1 - d) (w - avg) = d avg + (1 - d) w
        if self.settings.mode == "lookahead":
            torch._foreach_copy_(live, self.average)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the block, its live weights again after it."""
        with torch.no_grad():
            live = self._live(model)
            saved = [t.clone() for t in live]
            torch._foreach_copy_(live, self.average)
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, saved)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """The model takes the averaged weights for good (the end of training)."""
        torch._foreach_copy_(self._live(model), self.average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, self.average))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.keys if k not in state]
        if missing:
            raise KeyError(f"the checkpoint's weight average lacks {missing[:3]}")
        # copy into the tensors built from the model: they keep its dtype, device and memory layout
        torch._foreach_copy_(self.average, [state[k].to(a.device) for k, a in zip(self.keys, self.average)])
