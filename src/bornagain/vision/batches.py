"""From uint8 images in memory to model inputs and back: batch augmentation and prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bornagain.engine.device import autocast
from bornagain.vision.augment import normalize, random_crop_flip
from bornagain.vision.splits import iterate_batches


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
