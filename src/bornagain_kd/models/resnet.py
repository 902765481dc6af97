"""Classic CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2).

ResNet-d: a 3x3 stem conv of 16 channels with BN-ReLU, three stages of
n = (d-2)/6 post-activation basic units of widths 16, 32, 64 (strides 1, 2, 2),
then global pool and Linear. A unit computes

    y = ReLU( BN(Conv3x3( ReLU(BN(Conv3x3_stride(x))) )) + shortcut(x) )

with the parameter-free "option A" shortcut of the paper: the identity, or,
when the stage changes, x subsampled by 2 and zero-padded in channels.
ResNet-20 has 0.27M parameters for 10 classes, ResNet-56 0.85M, ResNet-110 1.7M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models.common import init_weights, positive_int, stem_conv
from bornagain_kd.models.registry import register_model


class BasicUnit(nn.Module):
    """Conv3x3-BN-ReLU-Conv3x3-BN + option-A shortcut, then ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.stride = stride
        self.pad_channels = width - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (b, c, h/2, w/2)
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))  # zeros for the new channels
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))  # (b, width, h/s, w/s)
        y = self.norm2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages of basic units, global pool, Linear."""

    def __init__(self, units: int, num_classes: int, in_channels: int = 3, widths=(16, 32, 64)):
        super().__init__()
        self.stem = stem_conv(in_channels, widths[0])
        self.stem_norm = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        width = widths[0]
        for s, stage_width in enumerate(widths):
            for u in range(units):
                stride = 2 if (s > 0 and u == 0) else 1
                layers.append(BasicUnit(width, stage_width, stride))
                width = stage_width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))  # (b, 16, h, w)
        x = self.features(x)  # (b, 64, h/4, w/4)
        return self.classifier(torch.flatten(self.pool(x), 1))  # (b, num_classes)


@register_model("resnet-{depth}")
def resnet(depth: int, num_classes: int, in_channels: int = 3, name: str = "") -> CifarResNet:
    """ResNet-d with basic units (resnet-8, -20, -32, -44, -56, -110)."""
    name = name or f"resnet-{depth}"
    depth = positive_int(depth, "depth", name)
    if depth < 8 or (depth - 2) % 6:
        raise UserError(
            f"model {name!r}: CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 8, 20, 32, 56, 110), got {depth}"
        )
    return CifarResNet(units=(depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)
