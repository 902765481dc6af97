"""AdamW with layer-wise learning-rate decay, linear warmup and linear decay (BAM paper's fine-tuning setup).

Layer-wise decay gives each parameter a depth d and the learning rate

    lr_d = lr * decay^(L + 2 - d)

with L transformer layers: d = 0 for the embeddings, i + 1 for transformer layer
i, L + 1 for the pooler (and anything else after the last layer), L + 2 for the
task heads, which therefore get the full lr. LayerNorm weights and all biases
get no weight decay. The schedule multiplies every group's lr by

    s(t) = t / W                       for t < W (W = warmup_fraction * T)
    s(t) = max(0, (T - t) / (T - W))   afterwards.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from bornagain_kd.glue.model import MultiTaskModel, num_encoder_layers

# Transformer layer i: "encoder.layer.3." (BERT, RoBERTa, ELECTRA), "transformer.layer.3." (DistilBERT),
# "layers.3." (others).
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")


def parameter_depth(encoder_param_name: str, num_layers: int) -> int:
    """Depth of one encoder parameter: 0 embeddings, i + 1 layer i, L + 1 pooler and the rest."""
    match = _LAYER.search(encoder_param_name)
    if match:
        return int(match.group(1)) + 1
    if "embed" in encoder_param_name:
        return 0
    return num_layers + 1


def no_weight_decay(name: str) -> bool:
    """LayerNorm weights and biases are not decayed."""
    lowered = name.lower()
    return name.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered


def parameter_depths(model: MultiTaskModel) -> dict[str, int]:
    """Depth of every trainable parameter, keyed by its full name in `model` (heads: L + 2)."""
    num_layers = num_encoder_layers(model)
    depths = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("encoder."):
            depths[name] = parameter_depth(name[len("encoder."):], num_layers)
        else:  # task heads
            depths[name] = num_layers + 2
    return depths


def layerwise_lr_groups(model: MultiTaskModel, *, lr: float, layerwise_lr_decay: float,
                        weight_decay: float) -> list[dict]:
    """AdamW parameter groups: one per (depth, decayed or not), lr * decay^(L + 2 - depth).

    Each group also carries `depth` (int) so logs and tests can tell groups apart;
    works for a model with any number of task heads.
    """
    num_layers = num_encoder_layers(model)
    depths = parameter_depths(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if name not in depths:
            continue
        depth, decayed = depths[name], not no_weight_decay(name)
        key = (depth, decayed)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * layerwise_lr_decay ** (num_layers + 2 - depth),
                "weight_decay": weight_decay if decayed else 0.0,
                "depth": depth,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: MultiTaskModel, optim_cfg, *, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over `layerwise_lr_groups` (peak lr `lr`, default `optim_cfg.lr`).

    Move the model to its device first: the fused kernel is chosen from where the parameters are.
    """
    groups = layerwise_lr_groups(
        model, lr=optim_cfg.lr if lr is None else lr,
        layerwise_lr_decay=optim_cfg.layerwise_lr_decay, weight_decay=optim_cfg.weight_decay,
    )
    # The fused kernel is ~6x faster than the default on CPU (measured: 31 ms -> 5 ms per step
    # for BERT-Tiny, most of it the 30522 x 128 word embedding); same update rule.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2),
                             eps=optim_cfg.adam_eps, fused=fused or None)


def warmup_linear_decay(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier s(t) of the module docstring."""
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class _WarmupLinearDecay:
    # A callable object (not a lambda) so LambdaLR's state_dict stores plain numbers.
    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return warmup_linear_decay(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int,
                    warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_fraction * total_steps` steps, then linear decay to 0."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupLinearDecay(total_steps, warmup_steps))


def clip_gradients(model: nn.Module, max_grad_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (0 disables clipping); return the norm before clipping.

    The norm stays a tensor (no device sync); call float() on it only when logging.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    # max_norm=inf computes the norm without clipping.
    return torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
