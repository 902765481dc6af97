"""A fast CIFAR network family after airbench (K. Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU";
KellerJordan/cifar10-airbench, airbench94.py).

    airbench-{w1}-{w2}-{w3}  (airbench-64-256-256 is airbench94's network, 1.97M parameters for 10 classes)

    whitening stem  2x2 conv, 3 -> 2 * 3 * 2 * 2 = 24 channels, no padding: its filters are the eigenvectors of
                    the covariance of the training images' 2x2 patches and their negatives, each scaled by
                    1 / sqrt(eigenvalue + eps), so its outputs are whitened patches (fit_to_data; frozen), plus a
                    trainable bias; GELU                                        (b, 24, h - 1, w - 1)
    3 conv groups   conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU, widths w1, w2, w3
                                                                  32x32: (b, w1, 15, 15) (b, w2, 7, 7) (b, w3, 3, 3)
    head            global max pool -> Linear(w3, classes, no bias) -> x logit_scale (1/9)   (b, classes)

Convolutions are Dirac-initialised: the first ``in`` of their output channels pass the input through unchanged,
as a residual block does at initialisation; the others keep PyTorch's default init. Batch norms have a frozen
scale of 1 (only their shift trains), momentum 0.4 (airbench writes 0.6 in the other convention) and eps 1e-12.
Two differences from airbench94: the stem's bias keeps PyTorch's default init (airbench94 zeroes it) and trains for
the whole run (airbench94 freezes it after 3 epochs, for speed). Pair it with the fast recipes' optimiser (configs/fast-cifar10.yaml): the normalisation shifts train at 64x the lr
(train.norm_lr_scale), label smoothing 0.2, lookahead weight averaging, a triangular schedule, flip TTA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models.common import positive_int
from bornagain_kd.models.registry import register_model


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution without bias, Dirac-initialised on its first ``in_channels`` outputs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if not self.weight.is_meta:
            w = self.weight.data
            nn.init.dirac_(w[: w.size(1)])


def frozen_scale_norm(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    """Batch norm whose scale stays 1 (not trained): only the shift learns."""
    norm = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float, bn_eps: float):
        super().__init__()
        self.conv1 = DiracConv(in_channels, out_channels)
        self.norm1 = frozen_scale_norm(out_channels, bn_momentum, bn_eps)
        self.conv2 = DiracConv(out_channels, out_channels)
        self.norm2 = frozen_scale_norm(out_channels, bn_momentum, bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (b, out, h, w)
        if min(x.shape[-2:]) >= 2:  # halve (floor, as airbench); a 1x1 map (8x8 inputs) stays as it is
            x = F.max_pool2d(x, 2)  # (b, out, h // 2, w // 2)
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))


def patches_of(images: torch.Tensor, size: int) -> torch.Tensor:
    """Every size x size patch of every image, flattened: (n, c, h, w) -> (n (h-size+1) (w-size+1), c size size)."""
    c = images.shape[1]
    patches = images.unfold(2, size, 1).unfold(3, size, 1)  # (n, c, h', w', size, size)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def whitening_filters(images: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    """Filters (2 c size^2, c, size, size) that whiten ``size`` x ``size`` patches of ``images`` (n, c, h, w):
    V / sqrt(lambda + eps) for the eigenpairs (lambda, V) of the patch covariance, largest first, then their
    negatives (the GELU after the stem would otherwise lose each direction's negative half)."""
    patches = patches_of(images.float(), size).double()  # (N, d), d = c size^2
    covariance = patches.T @ patches / patches.shape[0]  # (d, d): uncentred, as airbench
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None])  # (d, d): row k = filter k
    filters = filters.reshape(-1, images.shape[1], size, size).float()
    return torch.cat([filters, -filters])


class AirbenchNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int], num_classes: int, in_channels: int = 3, *,
                 whiten_size: int = 2, whiten_eps: float = 5e-4, bn_momentum: float = 0.4, bn_eps: float = 1e-12,
                 logit_scale: float = 1 / 9):
        super().__init__()
        stem_width = 2 * in_channels * whiten_size ** 2
        self.stem = nn.Conv2d(in_channels, stem_width, kernel_size=whiten_size, padding=0, bias=True)
        self.stem.weight.requires_grad_(False)  # fixed by fit_to_data, never trained
        self.whiten_size, self.whiten_eps = whiten_size, whiten_eps
        groups, width = [], stem_width
        for out in widths:
            groups.append(ConvGroup(width, out, bn_momentum, bn_eps))
            width = out
        self.groups = nn.Sequential(*groups)
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def fit_to_data(self, images: torch.Tensor) -> None:
        """Set the whitening stem from normalised training images (n, c, h, w) (airbench: the first 5,000)."""
        filters = whitening_filters(images, self.whiten_size, self.whiten_eps)
        self.stem.weight.copy_(filters.to(self.stem.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem(x))  # (b, 24, h - 1, w - 1)
        x = self.groups(x)  # (b, w3, h', w')
        # (b, w3): airbench's MaxPool2d(3) over the final 3x3 map. A max pool, not amax: amax's backward splits
        # the gradient over ties, and compiled under bf16 autocast (torch 2.13, CPU) it found no maximum and gave NaN
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return self.classifier(x) * self.logit_scale  # (b, classes)


@register_model("airbench-{w1}-{w2}-{w3}")
def airbench(w1: int, w2: int, w3: int, num_classes: int, in_channels: int = 3, name: str = "",
             bn_momentum: float = 0.4, bn_eps: float = 1e-12, logit_scale: float = 1 / 9,
             whiten_eps: float = 5e-4) -> AirbenchNet:
    """airbench-W1-W2-W3: whitening stem, three conv groups of these widths (airbench-64-256-256: airbench94's)."""
    name = name or f"airbench-{w1}-{w2}-{w3}"
    widths = tuple(positive_int(w, "width", name) for w in (w1, w2, w3))
    if not 0 < bn_momentum <= 1:
        raise UserError(f"model {name!r}: bn_momentum={bn_momentum} must be in (0, 1] (PyTorch's convention)")
    return AirbenchNet(widths, num_classes, in_channels, bn_momentum=bn_momentum, bn_eps=bn_eps,
                       logit_scale=logit_scale, whiten_eps=whiten_eps)
