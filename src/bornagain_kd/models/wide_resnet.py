"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis 2016).

WRN-d-w: a 3x3 stem of 16 channels, three stages of n = (d-4)/6 pre-activation
basic units of widths 16w, 32w, 64w (strides 1, 2, 2), then BN-ReLU-pool-Linear.
A unit computes

    y = Conv3x3( Dropout( ReLU(BN( Conv3x3_stride( ReLU(BN(x)) ) )) ) ) + shortcut(x)

where the shortcut is the identity, or a 1x1 strided conv of the pre-activated
input ReLU(BN(x)) when the width or resolution changes (as in the authors' code).
WRN-28-10 has 36.5M parameters and WRN-28-20 146M for 100 classes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models.common import PreActHead, StridedConv1x1, init_weights, positive_int, stem_conv
from bornagain_kd.models.registry import register_model


class WideBasicUnit(nn.Module):
    """Pre-activation basic unit: BN-ReLU-Conv3x3-BN-ReLU-Dropout-Conv3x3 + shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, dropout: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != width:
            self.shortcut = StridedConv1x1(in_channels, width, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.norm1(x))  # (b, c_in, h, w), pre-activation
        y = self.conv1(o)  # (b, width, h/s, w/s)
        y = self.conv2(self.dropout(torch.relu(self.norm2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Stem, three stages of pre-activation basic units, pre-activation head.

    ``stage_widths``: the width of each stage; ``units``: units per stage;
    ``head_width``: project the last stage to this width before the classifier
    (Match students); None = no projection.
    """

    def __init__(
        self,
        stage_widths: Sequence[int],
        units: int,
        num_classes: int,
        in_channels: int = 3,
        stem_channels: int = 16,
        dropout: float = 0.3,
        head_width: int | None = None,
    ):
        super().__init__()
        self.stem = stem_conv(in_channels, stem_channels)
        layers: list[nn.Module] = []
        width = stem_channels
        for s, stage_width in enumerate(stage_widths):
            for u in range(units):
                stride = 2 if (s > 0 and u == 0) else 1
                layers.append(WideBasicUnit(width, stage_width, stride, dropout))
                width = stage_width
        self.features = nn.Sequential(*layers)
        self.head = PreActHead(width, head_width)
        self.num_features = self.head.out_width
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (b, 16, h, w)
        x = self.features(x)  # (b, 64w, h/4, w/4)
        return self.classifier(self.head(x))  # (b, num_classes)


def check_dropout(dropout: object, name: str) -> float:
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"model {name!r}: dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


@register_model("wrn-{depth}-{width}")
def wide_resnet(
    depth: int, width: int, num_classes: int, in_channels: int = 3, dropout: float = 0.3, name: str = ""
) -> WideResNet:
    """WRN-d-w (e.g. wrn-16-1, wrn-28-10); ``dropout`` between the convs (0.3 on CIFAR)."""
    name = name or f"wrn-{depth}-{width}"
    depth = positive_int(depth, "depth", name)
    width = positive_int(width, "widen factor", name)
    if depth < 10 or (depth - 4) % 6:
        raise UserError(
            f"model {name!r}: Wide-ResNet depth must be 6n+4 with n >= 1 (e.g. 10, 16, 22, 28, 40), got {depth}"
        )
    return WideResNet(
        stage_widths=(16 * width, 32 * width, 64 * width),
        units=(depth - 4) // 6,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=check_dropout(dropout, name),
    )
