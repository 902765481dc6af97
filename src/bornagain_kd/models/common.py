"""Pieces every family shares: weight initialisation, the optional width-matching
projection before the head, and the pre-activation head itself.

Every model in the zoo exposes three attributes used for cross-architecture
students (BAN paper, Table 2: students of another architecture):

- ``model.stem``: the first convolution (``nn.Conv2d``), copied from a teacher;
- ``model.classifier``: the final ``nn.Linear``, copied from a teacher;
- ``model.num_features``: the classifier's input width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bornagain_kd.errors import UserError


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU gain, as in the WRN and
    torchvision ResNet code), BatchNorm weight 1 / bias 0, Linear bias 0 (the
    Linear weight keeps PyTorch's default uniform init).

    Skipped on the meta device (parameter counting): there is nothing to fill,
    and meta ``normal_`` goes through a slow decomposition that imports dynamo.
    """
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def stem_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """The CIFAR stem: one 3x3 convolution, stride 1, no bias (BN follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class PreActHead(nn.Module):
    """End of a pre-activation network: [BN-ReLU-Conv1x1 projection] - BN - ReLU -
    global average pool - flatten.

    The projection exists only for Match students whose last stage is narrower
    than their teacher's final features (``in_width != out_width``); it is the
    1x1 convolution the teacher's own transitions use, so the classifier input
    width equals the teacher's and the classifier can be shared.
    Adaptive pooling makes the network accept any input size (32x32 CIFAR,
    8x8 digits, ...).
    """

    def __init__(self, in_width: int, out_width: int | None = None):
        super().__init__()
        out_width = in_width if out_width is None else out_width
        if out_width != in_width:
            self.projection = nn.Sequential(
                nn.BatchNorm2d(in_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_width, out_width, kernel_size=1, bias=False),
            )
        else:
            self.projection = nn.Identity()
        self.norm = nn.BatchNorm2d(out_width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_width = out_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)  # (b, out_width, h, w)
        x = torch.relu(self.norm(x))
        # flatten, not view: the pooled tensor may be channels_last
        return torch.flatten(self.pool(x), 1)  # (b, out_width)


def positive_int(value: object, what: str, name: str) -> int:
    """Check a number parsed from a model name is a positive integer."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value <= 0:
        raise UserError(f"model {name!r}: {what} must be a positive integer, got {value!r}")
    return value


def positive_ratio(value: object, what: str, name: str) -> float:
    """Check a width ratio parsed from a model name is a positive number."""
    if not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"model {name!r}: {what} must be a positive number such as 0.5 or 1, got {value!r}")
    return float(value)


class StridedConv1x1(nn.Conv2d):
    """A 1x1 projection shortcut with stride s (weights, names and parameter count of ``nn.Conv2d``).

    On a CPU ``channels_last`` input it subsamples first and runs a stride-1 1x1 convolution: the same
    function (each output pixel reads one input pixel), computed by another kernel. PyTorch's CPU
    backward of a *strided* 1x1 channels_last convolution corrupts the heap for some shapes (seen with
    torch 2.13: 6 channels on 8x8 or 16x16 inputs aborts the process with "corrupted double-linked
    list"). Other inputs take the ordinary path, so default (contiguous fp32) results are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) != (1, 1) and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
            return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)  # (b, c_out, ceil(h/s), ceil(w/s))
        return super().forward(x)
