"""A frozen model prepared for inference: batch norm folded into the convolution before it.

In eval mode a BatchNorm2d right after a Conv2d (and used by nothing else) is an affine map per channel,
so it folds into the convolution's weight and bias: w' = w * g / sqrt(v + eps), b' = (b - m) * g /
sqrt(v + eps) + beta. Post-activation networks (ResNet) lose every batch norm; DenseNet-BC the one after
each bottleneck 1x1 convolution; pre-activation networks (WRN, PreResNet: BN -> ReLU -> conv) have none to
fold. Done with torch.fx's conv/bn fusion on a symbolic trace; a model that cannot be traced is returned
unchanged.
"""

from __future__ import annotations

import copy

import torch


def count_batch_norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batch_norms(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """(a folded eval-mode copy of ``model``, number of batch norms folded); ``model`` is not changed.
    A model torch.fx cannot trace comes back as an eval-mode deep copy with 0 folded."""
    from torch.fx.experimental.optimization import fuse  # noqa: PLC0415

    before = count_batch_norms(model)
    model = copy.deepcopy(model).eval().requires_grad_(False)
    try:
        folded = fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 - data-dependent control flow: nothing to fold safely
        return model, 0
    return folded.eval().requires_grad_(False), before - count_batch_norms(folded)
