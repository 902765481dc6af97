"""Teacher annealing (BAM, SPEC section 2): the student's targets and losses.

With lambda = step / total_steps rising linearly from 0 (first step) to 1 (end):

    classification:  target = lambda * onehot(y) + (1 - lambda) * softmax(z_teacher)
                     loss   = -sum_j target_j * log_softmax(z_student)_j
    regression:      target = lambda * y + (1 - lambda) * teacher_prediction
                     loss   = (prediction - target)^2

(STS-B labels are scaled to [0, 1] by y / 5 before they reach these functions.)

The four student arms (``bam.targets``) differ only in the weight of the hard label
and in what fills the rest of the target:

    arm                 label weight          rest of the target
    annealed (BAM)      lambda                teacher
    fixed               1 - distill_weight    teacher          (original code: 0.5)
    labels              1                     -                (plain multi-task)
    smoothing-annealed  lambda                uniform over the classes (classification)
                                              the task's mean training label (regression)

``smoothing-annealed`` is the reviewers' control: the same schedule without any
teacher. For classification it anneals from uniform label smoothing to hard labels.
Regression has no uniform distribution; its uninformative analogue is the prior
mean, so the target shrinks y towards the task's mean training label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bornagain.errors import UserError
from bornagain.glue.bam_config import TARGET_ARMS

TEACHER_ARMS = ("annealed", "fixed")
"""Arms whose targets need the teachers' cached predictions."""


def annealing_lambda(step: int, total_steps: int) -> float:
    """lambda = step / total_steps, clamped to [0, 1] (step counts from 0)."""
    if total_steps <= 0:
        raise UserError(f"total_steps must be positive, got {total_steps}: train for at least one step")
    return min(1.0, max(0.0, step / total_steps))


def label_weight(arm: str, annealing: float, distill_weight: float) -> float:
    """Weight of the hard label in the target of ``arm`` at schedule value ``annealing`` (lambda)."""
    if arm in ("annealed", "smoothing-annealed"):
        return annealing
    if arm == "fixed":
        return 1.0 - distill_weight
    if arm == "labels":
        return 1.0
    raise UserError(f"unknown bam.targets arm {arm!r}: choose from {', '.join(TARGET_ARMS)}")


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


def classification_target(
    arm: str,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    num_classes: int,
    annealing: float,
    distill_weight: float,
) -> torch.Tensor:
    """The (b, c) target of ``arm`` for a classification task (see the module docstring)."""
    weight = label_weight(arm, annealing, distill_weight)
    if arm in TEACHER_ARMS:
        if teacher_logits is None:
            raise ValueError(f"arm {arm!r} needs teacher logits")
        return annealed_classification_target(labels, teacher_logits, weight)
    if arm == "smoothing-annealed":
        return smoothing_classification_target(labels, num_classes, weight)
    return F.one_hot(labels.long(), num_classes=num_classes).float()  # labels


def regression_target(
    arm: str,
    labels: torch.Tensor,
    teacher_predictions: torch.Tensor | None,
    label_mean: float,
    annealing: float,
    distill_weight: float,
) -> torch.Tensor:
    """The (b,) target of ``arm`` for a regression task (see the module docstring)."""
    weight = label_weight(arm, annealing, distill_weight)
    if arm in TEACHER_ARMS:
        if teacher_predictions is None:
            raise ValueError(f"arm {arm!r} needs teacher predictions")
        return annealed_regression_target(labels, teacher_predictions, weight)
    if arm == "smoothing-annealed":
        return annealed_regression_target(labels, torch.full_like(labels.float(), label_mean), weight)
    return labels.float()  # labels
