"""One visible training loop for image classifiers, with an optional frozen teacher.

The whole dataset sits in memory as uint8 tensors; a batch is an index tensor
into it, augmented and normalised as a batch (no per-image Python). Shuffling
and augmentation draw from a ``torch.Generator`` seeded per epoch, so an epoch
replays exactly after a resume.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from bornagain.engine.device import autocast
from bornagain.engine.distributed import DistInfo, all_reduce_sum, shard
from bornagain.engine.logging import progress
from bornagain.vision.augment import normalize, random_crop_flip
from bornagain.vision.splits import iterate_batches

# A loss maps (student_logits, teacher_logits or None, labels) to {"loss", "label_loss", "kd_loss"}.
LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], dict]


@dataclass(frozen=True)
class BatchPipeline:
    """How raw uint8 images become a model input: augmentation, normalisation, layout, device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    augment: bool = False
    pad: int = 4
    hflip: bool = True
    channels_last: bool = False

    def __call__(self, images_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images_u8.to(self.device, non_blocking=True)  # (b, c, h, w) uint8: 4x fewer bytes to move than float
        if self.augment:
            x = random_crop_flip(x, pad=self.pad, hflip=self.hflip, generator=generator)
        x = normalize(x, self.mean, self.std)  # (b, c, h, w) float32
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _fault_injection(step: int, run_name: str) -> None:
    """Test hook: BORNAGAIN_KILL_AT_STEP=N (or RUN:N, e.g. gen1:5) makes the process SIGKILL itself
    before global step N (of run RUN). The resume tests use it to kill a run exactly mid-epoch."""
    at = os.environ.get("BORNAGAIN_KILL_AT_STEP")
    if at is None:
        return
    name, _, number = at.rpartition(":")
    if step == int(number) and name in ("", run_name):
        os.kill(os.getpid(), signal.SIGKILL)


def train_one_epoch(
    model: torch.nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    pipeline: BatchPipeline,
    *,
    batch_size: int,
    generator: torch.Generator,
    precision: str,
    teacher: torch.nn.Module | None = None,
    first_step: int = 0,
    desc: str = "train",
    run_name: str = "",
    show_progress: bool = True,
    dist_info: DistInfo = DistInfo(),
) -> dict[str, float]:
    """Train ``model`` for one pass over (images, labels); return mean loss parts and accuracy.

    The teacher, when given, is frozen: it runs in eval mode under inference_mode on the
    same augmented batch as the student, and no gradient can reach it.
    Under torchrun each rank trains on its slice of every global batch of ``batch_size``.
    """
    model.train()
    if teacher is not None:
        teacher.eval()
    n = labels.shape[0]
    totals = {"loss": 0.0, "label_loss": 0.0, "kd_loss": 0.0}
    correct = 0
    seen = 0
    batches = iterate_batches(n, batch_size, shuffle=True, generator=generator, drop_last=False)
    bar = progress(batches, total=(n + batch_size - 1) // batch_size, desc=desc,
                   enabled=show_progress and dist_info.is_main)
    step = first_step
    for index in bar:
        _fault_injection(step, run_name)
        if len(index) < dist_info.world_size:
            continue  # a last batch too small to give every rank an example: skipped on all ranks alike
        index = shard(index, dist_info)
        x = pipeline(images[index], generator)  # (b, c, h, w)
        y = labels[index].to(pipeline.device, non_blocking=True)  # (b,)
        teacher_logits = None
        if teacher is not None:
            with torch.inference_mode(), autocast(pipeline.device, precision):
                teacher_logits = teacher(x).float()  # (b, classes)
            teacher_logits = teacher_logits.clone()  # leave inference mode: a plain tensor without grad
        with autocast(pipeline.device, precision):
            logits = model(x)  # (b, classes)
        parts = loss_fn(logits.float(), teacher_logits, y)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        b = y.shape[0]
        for key in totals:
            totals[key] += float(parts[key].detach()) * b
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += b
        step += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{totals['loss'] / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    keys = list(totals)
    summed = all_reduce_sum([totals[k] for k in keys] + [correct, seen], pipeline.device)
    totals, correct, seen = dict(zip(keys, summed[:-2])), summed[-2], summed[-1]
    out = {key: value / max(seen, 1) for key, value in totals.items()}
    out["accuracy"] = 100.0 * correct / max(seen, 1)
    out["steps"] = step - first_step
    return out


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, pipeline: BatchPipeline, *,
                   batch_size: int, precision: str) -> torch.Tensor:
    """Logits of ``model`` in eval mode on un-augmented images: (n, c, h, w) uint8 -> (n, classes) float32 on CPU."""
    model.eval()
    out = []
    for index in iterate_batches(images.shape[0], batch_size, shuffle=False, generator=None):
        x = pipeline(images[index])
        with autocast(pipeline.device, precision):
            out.append(model(x).float().cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15) -> dict[str, float]:
    """Accuracy and error (%), negative log-likelihood, and expected calibration error (%).

    probs: (n, classes) probabilities; labels: (n,). ECE uses ``bins`` equal-width
    confidence bins: sum_b |B|/n * |accuracy(B) - confidence(B)|.
    """
    if labels.numel() == 0:
        return {"accuracy": float("nan"), "error": float("nan"), "nll": float("nan"), "ece": float("nan")}
    probs = probs.double()
    confidence, predicted = probs.max(dim=1)
    hit = (predicted == labels).double()
    accuracy = 100.0 * float(hit.mean())
    nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # (n,) bin of each example
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += float(mask.double().mean() * (hit[mask].mean() - confidence[mask].mean()).abs())
    return {"accuracy": accuracy, "error": 100.0 - accuracy, "nll": nll, "ece": 100.0 * ece}
