"""Batched image augmentation and normalisation on tensors, no per-image Python.

The Wide-ResNet CIFAR setting used by the BAN paper: a random crop of 32 after
4-pixel padding plus a horizontal flip, then per-channel mean/std normalisation. Both steps run
on a whole (b, c, h, w) batch on whatever device it lives on; all randomness comes
from an explicit `torch.Generator`, so a run's augmentation is fixed by its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def default_crop_pad(height: int) -> int:
    """Zero padding for the random crop: 4 for 32x32 CIFAR (the paper's), 1 for 8x8 digits.

    pad = max(1, h // 8), i.e. the CIFAR ratio of one eighth of the side.
    """
    return max(1, height // 8)


def _draw(shape: tuple[int, ...], high: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Integers in [0, high) drawn on the generator's device, then moved to `device`."""
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


def random_crop_flip(
    images: torch.Tensor,
    pad: int | None,
    hflip: bool,
    generator: torch.Generator,
    *,
    pad_mode: str = "zeros",
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, per image.

    Each image i is zero-padded by `pad` on every side to (h + 2p, w + 2p), and
    the (h, w) window with top-left corner (dy_i, dx_i), dy_i, dx_i ~ U{0..2p},
    is kept:  out[i, :, r, s] = padded[i, :, dy_i + r, dx_i + s].
    With `hflip`, image i is mirrored (s -> w - 1 - s) when flip_i ~ Bernoulli(0.5).
    The offsets and flips are drawn in that order (dy, dx, flip) for every call,
    whether or not `hflip` is set, so the crops do not depend on the flag.

    images: (b, c, h, w), uint8 or float; returns the same shape, dtype and device.
    pad: None means `default_crop_pad(h)`; 0 means no crop (flip only).
    pad_mode: "zeros", or "reflect": the window reads the image mirrored at its edges (index -k reads k,
    h - 1 + k reads h - 1 - k), so no black border enters the crop.
    flip: (b,) bool, the flips to use instead of the drawn ones (an alternating-flip schedule); the flips are
    drawn all the same, so the generator's stream does not depend on it.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (b, c, h, w), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    pad = default_crop_pad(h) if pad is None else pad
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    device = images.device
    dy = _draw((b,), 2 * pad + 1, generator, device)  # (b,)
    dx = _draw((b,), 2 * pad + 1, generator, device)  # (b,)
    drawn = _draw((b,), 2, generator, device).bool()  # (b,)
    flip = drawn if flip is None else flip.to(device=device, dtype=torch.bool)
    if not hflip:
        flip = torch.zeros_like(flip)
    if b == 0:
        return images.clone()
    if pad_mode == "reflect":
        return _reflect_window(images, pad, dy, dx, flip)
    if pad_mode != "zeros":
        raise ValueError(f"pad_mode must be zeros or reflect, got {pad_mode!r}")

    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images  # (b, c, H, W)
    big_h, big_w = h + 2 * pad, w + 2 * pad
    rows = dy[:, None] + torch.arange(h, device=device)  # (b, h)
    col_step = torch.arange(w, device=device)
    # A flipped image reads its window right to left: column s takes w - 1 - s.
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - col_step, col_step)  # (b, w)
    flat_idx = (rows[:, :, None] * big_w + cols[:, None, :]).reshape(b, 1, h * w)  # (b, 1, h*w)
    out = padded.reshape(b, c, big_h * big_w).gather(2, flat_idx.expand(b, c, h * w))  # (b, c, h*w)
    return out.reshape(b, c, h, w)


def _reflect_window(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
                    flip: torch.Tensor) -> torch.Tensor:
    """The (h, w) windows of a reflect-padded image, read from the unpadded image by mirrored indices."""
    b, c, h, w = images.shape
    if pad >= min(h, w):
        raise ValueError(f"reflect padding of {pad} needs images larger than {pad} pixels, got {h}x{w}")
    device = images.device

    def mirrored(index: torch.Tensor, size: int) -> torch.Tensor:  # -k -> k, size - 1 + k -> size - 1 - k
        index = index.abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)

    rows = mirrored(dy[:, None] + torch.arange(h, device=device) - pad, h)  # (b, h)
    col_step = torch.arange(w, device=device)
    cols = mirrored(dx[:, None] + torch.where(flip[:, None], w - 1 - col_step, col_step) - pad, w)  # (b, w)
    flat_idx = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w)  # (b, 1, h*w)
    return images.reshape(b, c, h * w).gather(2, flat_idx.expand(b, c, h * w)).reshape(b, c, h, w)


def random_resized_crop_flip(
    images: torch.Tensor,
    *,
    scale: tuple[float, float],
    hflip: bool,
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random-resized crop and horizontal flip of a whole batch on its device (timm's / torchvision's ImageNet
    augmentation, without a Python loop per image), for images larger than CIFAR.

    For image i: an area fraction s_i ~ U(scale) of the h x w image and a log aspect ratio a_i ~ U(log ratio) give a
    crop of width sqrt(s_i h w e^a_i) and height sqrt(s_i h w / e^a_i), each clamped to the image (torchvision
    instead retries ten times, then falls back to a centre crop); its top-left corner is uniform over the positions
    that keep it inside the image. The crop is resampled bilinearly to h x w (always enlarged or kept: no
    antialiasing is needed), mirrored when flip_i (drawn ~ Bernoulli(0.5), or given: ``flip``).

    images: (b, c, h, w) uint8; returns (b, c, h, w) uint8 (rounded), on the same device. Draws (s, a, y, x, flip)
    as one (b, 5) uniform tensor from ``generator``, so the stream does not depend on ``hflip``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (b, c, h, w), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    device = images.device
    u = torch.rand((b, 5), generator=generator, device=generator.device).to(device, torch.float32)  # (b, 5)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (h * w)  # (b,) pixels
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])  # (b,) width / height
    crop_w = torch.sqrt(area * aspect).clamp(1, w)  # (b,)
    crop_h = torch.sqrt(area / aspect).clamp(1, h)  # (b,)
    top = u[:, 2] * (h - crop_h)  # (b,) in pixels, continuous
    left = u[:, 3] * (w - crop_w)
    drawn = u[:, 4] < 0.5
    flip = drawn if flip is None else flip.to(device=device, dtype=torch.bool)
    if not hflip:
        flip = torch.zeros_like(flip)
    if b == 0:
        return images.clone()
    # affine_grid maps output coordinates in [-1, 1] to input ones: x_in = theta_00 x_out + theta_02
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = (crop_w / w) * torch.where(flip, -1.0, 1.0)  # a mirrored crop reads right to left
    theta[:, 0, 2] = (left + crop_w / 2) / w * 2 - 1  # the crop's centre
    theta[:, 1, 1] = crop_h / h
    theta[:, 1, 2] = (top + crop_h / 2) / h * 2 - 1
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)  # (b, h, w, 2)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)  # (b, c, h, w)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Per-channel normalisation of uint8 pixels: x_hat = (x / 255 - mean_c) / std_c.

    images: (b, c, h, w) uint8; mean, std: c values in [0, 1] pixel units (as
    computed on the training split). Returns float32 (b, c, h, w) on the same device.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 pixels in 0..255, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images of shape {tuple(images.shape)} need one mean and std per channel, "
            f"got {len(mean)} means and {len(std)} stds"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    # One multiply-add per pixel: x * (1 / (255 std)) - mean / std.
    scale = 1.0 / (255.0 * std_t)  # (1, c, 1, 1)
    shift = mean_t / std_t  # (1, c, 1, 1)
    return torch.addcmul(-shift, images.to(torch.float32), scale)
