"""Cross-architecture students share their teacher's first and last layer
(BAN paper section 2.2).

The student's ``stem`` (first conv) and ``classifier`` (last Linear) become
copies of the teacher's, frozen by default. Shapes must agree exactly; a Match
student built with ``teacher=<the teacher's name>`` guarantees that.
"""

from __future__ import annotations

import torch
from torch import nn

from bornagain_kd.errors import UserError

SHARED_LAYERS = ("stem", "classifier")


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the model in .module, torch.compile in ._orig_mod
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


def _shared_layer(model: nn.Module, layer: str, role: str) -> nn.Module:
    module = getattr(model, layer, None)
    wanted = nn.Conv2d if layer == "stem" else nn.Linear
    problems = [] if isinstance(module, wanted) else [
        f"its `{layer}` is {type(module).__name__ if module is not None else 'missing'}, not an nn.{wanted.__name__}"]
    if not isinstance(getattr(model, "num_features", None), int):
        problems.append("it has no int `num_features`")
    if problems:
        raise UserError(
            f"ban.share_stem_and_head: the {role} ({type(model).__name__}) cannot share its first and last layer: "
            f"{' and '.join(problems)}. A model must expose `stem` (its first nn.Conv2d), `classifier` (its last "
            "nn.Linear) and `num_features` (the classifier's input width): add them, or set ban.share_stem_and_head=false"
        )
    return module


def _tensors(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {"weight": module.weight, "bias": module.bias}


def check_shareable(teacher: nn.Module, student: nn.Module) -> None:
    """Raise UserError unless the student's stem and classifier have exactly the
    teacher's shapes (weights, and biases present in both or in neither)."""
    teacher, student = _unwrap(teacher), _unwrap(student)
    for layer in SHARED_LAYERS:
        source = _tensors(_shared_layer(teacher, layer, "teacher"))
        target = _tensors(_shared_layer(student, layer, "student"))
        for kind in ("weight", "bias"):
            s, t = source[kind], target[kind]
            s_shape = None if s is None else tuple(s.shape)
            t_shape = None if t is None else tuple(t.shape)
            if s_shape != t_shape:
                raise UserError(
                    f"cannot share `{layer}.{kind}`: teacher has shape {s_shape}, student has {t_shape}; "
                    "build the student as a Match architecture of this teacher, e.g. "
                    "create_model('match-wrn-2-1', num_classes, in_channels, teacher=<teacher's name>), "
                    "with the same num_classes and in_channels as the teacher"
                )


def share_stem_and_head(teacher: nn.Module, student: nn.Module, *, freeze: bool = True) -> None:
    """Copy the teacher's ``stem`` and ``classifier`` weights and biases into the
    student; with ``freeze`` (the paper's setting) they get requires_grad=False
    so the optimiser never changes them. All shapes are checked before anything
    is copied, so a mismatch leaves the student untouched."""
    check_shareable(teacher, student)
    teacher, student = _unwrap(teacher), _unwrap(student)
    with torch.no_grad():
        for layer in SHARED_LAYERS:
            source = _tensors(getattr(teacher, layer))
            for kind, target in _tensors(getattr(student, layer)).items():
                if target is None:
                    continue
                target.copy_(source[kind])  # copy_ moves across devices/dtypes
                target.requires_grad_(not freeze)
