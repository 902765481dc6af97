"""From uint8 images in memory to model inputs and back: batch augmentation and prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bornagain_kd.engine.device import autocast
from bornagain_kd.engine.distributed import DistInfo, all_gather_objects
from bornagain_kd.vision.augment import normalize, random_crop_flip, random_resized_crop_flip
from bornagain_kd.vision.splits import iterate_batches


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
    pad_mode: str = "zeros"
    style: str = "crop"  # crop: pad and crop (random_crop_flip); rrc: random-resized crop (random_resized_crop_flip)
    rrc_scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, images_u8: torch.Tensor, generator: torch.Generator | None = None,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        """``flip``: (b,) bool, this batch's flips where a schedule fixes them (data.flip_mode=alternate)."""
        x = images_u8.to(self.device, non_blocking=True)  # (b, c, h, w) uint8: 4x fewer bytes to move than float
        if self.augment and self.style == "rrc":
            x = random_resized_crop_flip(x, scale=tuple(self.rrc_scale), hflip=self.hflip, generator=generator,
                                         flip=flip)
        elif self.augment:
            x = random_crop_flip(x, pad=self.pad, hflip=self.hflip, generator=generator, pad_mode=self.pad_mode,
                                 flip=flip)
        x = normalize(x, self.mean, self.std)  # (b, c, h, w) float32
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


TTA_MODES = ("off", "flip", "flip-shift")


def tta_logits(model: torch.nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Test-time augmentation of one normalised batch (b, c, h, w) -> logits (b, classes), float32.

    off:        z(x)
    flip:       (z(x) + z(mirror x)) / 2
    flip-shift: flip(x) / 2 + flip(x shifted 1 px up-left) / 4 + flip(x shifted 1 px down-right) / 4, the shifts
                read from the image reflect-padded by one pixel (airbench94's TTA level 2).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format

    def flip_mean(batch: torch.Tensor) -> torch.Tensor:
        mirrored = batch.flip(3).contiguous(memory_format=layout)
        return 0.5 * (model(batch).float() + model(mirrored).float())

    if tta == "off":
        return model(x).float()
    if tta == "flip":
        return flip_mean(x)
    h, w = x.shape[2], x.shape[3]
    padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect").to(x.dtype)  # (b, c, h + 2, w + 2)
    up_left = padded[:, :, 0:h, 0:w].contiguous(memory_format=layout)
    down_right = padded[:, :, 2:h + 2, 2:w + 2].contiguous(memory_format=layout)
    return 0.5 * flip_mean(x) + 0.25 * flip_mean(up_left) + 0.25 * flip_mean(down_right)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images, pipeline: BatchPipeline, *,
                   batch_size: int, precision: str, tta: str = "off", dist: DistInfo | None = None) -> torch.Tensor:
    """Logits of ``model`` in eval mode on un-augmented images: (n, c, h, w) uint8 (a tensor or an ``ImageView``)
    -> (n, classes) float32 on CPU; ``tta``: test-time augmentation (:func:`tta_logits`).

    With ``dist`` (under torchrun) every rank must call it: rank r predicts batches r, r + world, ... of the same
    batches one process would make (so every image meets the same batch and the same numbers come out), and every
    rank gets all the logits back, in order."""
    model.eval()
    batches = list(iterate_batches(images.shape[0], batch_size, shuffle=False, generator=None))
    sharded = dist is not None and dist.enabled
    mine = batches[dist.rank::dist.world_size] if sharded else batches
    out = []
    for index in mine:
        x = pipeline(images[index])
        with autocast(pipeline.device, precision):
            out.append(tta_logits(model, x, tta).cpu())
    if sharded:  # rank r's k-th batch is batch r + k * world: put every rank's back in order
        parts = all_gather_objects(out)
        out = [parts[i % dist.world_size][i // dist.world_size] for i in range(len(batches))]
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
