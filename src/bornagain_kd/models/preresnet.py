"""Pre-activation bottleneck ResNets for CIFAR (He et al. 2016, "Identity
Mappings in Deep Residual Networks").

PreResNet-d: a 3x3 stem of 16 channels, three stages of n = (d-2)/9
bottleneck units (bottleneck widths 16, 32, 64; outputs 4x that: 64, 128, 256;
strides 1, 2, 2), then BN-ReLU-pool-Linear. A unit computes, with o = ReLU(BN(x)),

    y = Conv1x1_{m -> out}( ReLU(BN( Conv3x3_stride_{m -> m}( ReLU(BN( Conv1x1_{in -> m}(o) )) ) )) )
        + shortcut

where the shortcut is x, or a strided 1x1 conv of o when width or resolution
changes. PreResNet-164 has 1.7M parameters, PreResNet-1001 10.3M (100 classes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models.common import PreActHead, StridedConv1x1, init_weights, positive_int, stem_conv
from bornagain_kd.models.registry import register_model

EXPANSION = 4  # output width = 4 x bottleneck width in the standard family


class PreActBottleneck(nn.Module):
    """BN-ReLU-Conv1x1(in -> m) - BN-ReLU-Conv3x3(m -> m) - BN-ReLU-Conv1x1(m -> out) + shortcut."""

    def __init__(self, in_channels: int, bottleneck: int, out_channels: int, stride: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, bottleneck, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm3 = nn.BatchNorm2d(bottleneck)
        self.conv3 = nn.Conv2d(bottleneck, out_channels, kernel_size=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = StridedConv1x1(in_channels, out_channels, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.norm1(x))  # (b, c_in, h, w)
        y = self.conv1(o)  # (b, m, h, w)
        y = self.conv2(torch.relu(self.norm2(y)))  # (b, m, h/s, w/s)
        y = self.conv3(torch.relu(self.norm3(y)))  # (b, out, h/s, w/s)
        return y + (x if self.shortcut is None else self.shortcut(o))


class PreActResNet(nn.Module):
    """Stem, three stages of pre-activation bottleneck units, pre-activation head.

    ``stage_widths``: each stage's output width; ``bottleneck_widths``: each
    stage's inner width; ``head_width``: project the last stage to this width
    before the classifier (Match students); None = no projection.
    """

    def __init__(
        self,
        stage_widths: Sequence[int],
        bottleneck_widths: Sequence[int],
        units: int,
        num_classes: int,
        in_channels: int = 3,
        stem_channels: int = 16,
        head_width: int | None = None,
    ):
        super().__init__()
        self.stem = stem_conv(in_channels, stem_channels)
        layers: list[nn.Module] = []
        width = stem_channels
        for s, (out, inner) in enumerate(zip(stage_widths, bottleneck_widths)):
            for u in range(units):
                stride = 2 if (s > 0 and u == 0) else 1
                layers.append(PreActBottleneck(width, inner, out, stride))
                width = out
        self.features = nn.Sequential(*layers)
        self.head = PreActHead(width, head_width)
        self.num_features = self.head.out_width
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (b, 16, h, w)
        x = self.features(x)  # (b, 256, h/4, w/4)
        return self.classifier(self.head(x))  # (b, num_classes)


@register_model("preresnet-{depth}")
def preresnet(depth: int, num_classes: int, in_channels: int = 3, name: str = "") -> PreActResNet:
    """PreResNet-d with bottleneck units (e.g. preresnet-164, preresnet-1001; preresnet-11 is tiny)."""
    name = name or f"preresnet-{depth}"
    depth = positive_int(depth, "depth", name)
    if depth < 11 or (depth - 2) % 9:
        raise UserError(
            f"model {name!r}: pre-activation bottleneck ResNet depth must be 9n+2 with n >= 1 "
            f"(e.g. 11, 47, 164, 1001), got {depth}"
        )
    bottlenecks = (16, 32, 64)
    return PreActResNet(
        stage_widths=tuple(EXPANSION * m for m in bottlenecks),
        bottleneck_widths=bottlenecks,
        units=(depth - 2) // 9,
        num_classes=num_classes,
        in_channels=in_channels,
    )
