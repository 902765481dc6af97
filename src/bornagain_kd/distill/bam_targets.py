"""Teacher annealing (BAM paper, Clark et al. 2019): the student's targets and losses.

With lambda = step / total_steps rising linearly from 0 (first step) to 1 (end):

    classification:  target = lambda * onehot(y) + (1 - lambda) * softmax(z_teacher)
                     loss   = -sum_j target_j * log_softmax(z_student)_j
    regression:      target = lambda * y + (1 - lambda) * teacher_prediction
                     loss   = (prediction - target)^2

(STS-B labels are scaled to [0, 1] by y / 5 before they reach these functions.)

The four student arms (``bam.targets``) differ only in the weight of the hard label
and in what fills the rest of the target; each is one declared entry of ``TARGET_ARMS``:

    arm                 label weight          rest of the target
    annealed (BAM)      lambda                teacher
    fixed               1 - distill_weight    teacher          (original code: 0.5)
    labels              1                     none             (plain multi-task)
    smoothing-annealed  lambda                prior: uniform over the classes (classification),
                                                     the task's mean training label (regression)

``smoothing-annealed`` is the reviewers' control: the same schedule without any
teacher. For classification it anneals from uniform label smoothing to hard labels.
Regression has no uniform distribution; its uninformative analogue is the prior
mean, so the target shrinks y towards the task's mean training label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from bornagain_kd.errors import UserError


@dataclass(frozen=True)
class TargetArm:
    """One declared student arm (a value of `bam.targets`)."""

    name: str
    needs_teacher: bool  # reads the teachers' cached predictions
    label_weight: Callable[[float, float], float]  # (lambda, distill_weight) -> weight of the hard label
    rest: Literal["teacher", "prior", "none"]  # what fills the other 1 - weight of the target


TARGET_ARMS: dict[str, TargetArm] = {a.name: a for a in (
    TargetArm("annealed", True, lambda annealing, distill_weight: annealing, "teacher"),  # BAM
    TargetArm("fixed", True, lambda annealing, distill_weight: 1.0 - distill_weight, "teacher"),
    TargetArm("labels", False, lambda annealing, distill_weight: 1.0, "none"),  # plain multi-task
    TargetArm("smoothing-annealed", False, lambda annealing, distill_weight: annealing, "prior"),
)}


def target_arm(name: str) -> TargetArm:
    """The declared arm ``name`` (resolved once per student run)."""
    if name not in TARGET_ARMS:
        raise UserError(f"unknown bam.targets arm {name!r}; choose from {', '.join(TARGET_ARMS)}")
    return TARGET_ARMS[name]


def annealing_lambda(step: int, total_steps: int) -> float:
    """lambda = step / total_steps, clamped to [0, 1] (step counts from 0)."""
    if total_steps <= 0:
        raise UserError(f"total_steps must be positive, got {total_steps}: train for at least one step")
    return min(1.0, max(0.0, step / total_steps))


def label_weight(arm: TargetArm | str, annealing: float, distill_weight: float) -> float:
    """Weight of the hard label in the target of ``arm`` at schedule value ``annealing`` (lambda)."""
    arm = target_arm(arm) if isinstance(arm, str) else arm
    return arm.label_weight(annealing, distill_weight)


def mixed_classification_target(labels: torch.Tensor, other: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * onehot(labels) + (1 - weight) * other; labels (b,), other (b, c) probabilities -> (b, c)."""
    onehot = F.one_hot(labels.long(), num_classes=other.shape[-1]).to(other.dtype)  # (b, c)
    return weight * onehot + (1.0 - weight) * other


def annealed_classification_target(
    labels: torch.Tensor, teacher_logits: torch.Tensor, annealing: float
) -> torch.Tensor:
    """lambda * onehot(y) + (1 - lambda) * softmax(z_teacher); labels (b,), logits (b, c) -> (b, c)."""
    return mixed_classification_target(labels, torch.softmax(teacher_logits.float(), dim=-1), annealing)


def smoothing_classification_target(labels: torch.Tensor, num_classes: int, annealing: float) -> torch.Tensor:
    """lambda * onehot(y) + (1 - lambda) * uniform(c); labels (b,) -> (b, c)."""
    uniform = torch.full((labels.shape[0], num_classes), 1.0 / num_classes, device=labels.device)  # (b, c)
    return mixed_classification_target(labels, uniform, annealing)


def annealed_regression_target(
    labels: torch.Tensor, teacher_predictions: torch.Tensor, annealing: float
) -> torch.Tensor:
    """lambda * y + (1 - lambda) * teacher_prediction; both (b,) -> (b,)."""
    return annealing * labels.float() + (1.0 - annealing) * teacher_predictions.float()


def soft_cross_entropy(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example -sum_j target_j * log_softmax(z_student)_j; logits and target (b, c) -> (b,)."""
    return -(target * torch.log_softmax(student_logits.float(), dim=-1)).sum(dim=-1)


def squared_error(predictions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example (prediction - target)^2; both (b,) -> (b,)."""
    return (predictions.float().reshape(-1) - target.float().reshape(-1)) ** 2


def _resolved(arm: TargetArm | str, teacher: torch.Tensor | None, annealing: float,
              distill_weight: float) -> tuple[TargetArm, float]:
    """(the declared arm, the weight of the hard label), refusing a teacher arm without the teacher's outputs."""
    arm = target_arm(arm) if isinstance(arm, str) else arm
    if arm.rest == "teacher" and teacher is None:
        raise ValueError(f"arm {arm.name!r} needs the teacher's outputs")
    return arm, arm.label_weight(annealing, distill_weight)


def classification_target(arm: TargetArm | str, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                          num_classes: int, annealing: float, distill_weight: float) -> torch.Tensor:
    """The (b, c) target of ``arm`` for a classification task (see the module docstring)."""
    arm, weight = _resolved(arm, teacher_logits, annealing, distill_weight)
    if arm.rest == "teacher":
        return annealed_classification_target(labels, teacher_logits, weight)
    if arm.rest == "prior":
        return smoothing_classification_target(labels, num_classes, weight)
    return F.one_hot(labels.long(), num_classes=num_classes).float()  # rest "none": the labels alone


def regression_target(arm: TargetArm | str, labels: torch.Tensor, teacher_predictions: torch.Tensor | None,
                      label_mean: float, annealing: float, distill_weight: float) -> torch.Tensor:
    """The (b,) target of ``arm`` for a regression task (see the module docstring)."""
    arm, weight = _resolved(arm, teacher_predictions, annealing, distill_weight)
    if arm.rest == "teacher":
        return annealed_regression_target(labels, teacher_predictions, weight)
    if arm.rest == "prior":
        return annealed_regression_target(labels, torch.full_like(labels.float(), label_mean), weight)
    return labels.float()  # rest "none": the labels alone
