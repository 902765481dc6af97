"""Teacher-annealing targets and losses (BAM paper) at lambda = 0, 0.5 and 1."""

import pytest
import torch

from bornagain_kd.errors import UserError
from bornagain_kd.distill.bam_targets import (
    annealed_classification_target,
    annealed_regression_target,
    annealing_lambda,
    classification_target,
    regression_target,
    soft_cross_entropy,
    squared_error,
)

LABELS = torch.tensor([0, 2])
TEACHER_LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
TEACHER_PROBS = torch.softmax(TEACHER_LOGITS, dim=-1)
ONEHOT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_lambda_is_step_over_total_steps():
    assert annealing_lambda(0, 200) == 0.0
    assert annealing_lambda(100, 200) == 0.5
    assert annealing_lambda(200, 200) == 1.0
    assert annealing_lambda(250, 200) == 1.0
    with pytest.raises(UserError):
        annealing_lambda(0, 0)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_classification_target(lam):
    target = annealed_classification_target(LABELS, TEACHER_LOGITS, lam)
    expected = lam * ONEHOT + (1 - lam) * TEACHER_PROBS
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.sum(-1), torch.ones(2))
    if lam == 0.0:
        torch.testing.assert_close(target, TEACHER_PROBS)  # pure distillation
    if lam == 1.0:
        torch.testing.assert_close(target, ONEHOT)  # pure supervised learning
    if lam == 0.5:
        # hand-computed first row: 0.5 * [1, 0, 0] + 0.5 * softmax([2, 0, -1])
        p = torch.exp(torch.tensor([2.0, 0.0, -1.0]))
        p = p / p.sum()
        torch.testing.assert_close(target[0], 0.5 * torch.tensor([1.0, 0.0, 0.0]) + 0.5 * p)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_regression_target(lam):
    labels = torch.tensor([0.8, 0.2])
    teacher = torch.tensor([0.6, 0.4])
    target = annealed_regression_target(labels, teacher, lam)
    torch.testing.assert_close(target, torch.tensor([lam * 0.8 + (1 - lam) * 0.6, lam * 0.2 + (1 - lam) * 0.4]))
    prediction = torch.tensor([0.7, 0.1])
    torch.testing.assert_close(squared_error(prediction, target), (prediction - target) ** 2)


def test_soft_cross_entropy_is_minus_sum_target_log_softmax():
    student = torch.tensor([[0.3, -0.2, 1.0], [1.5, 0.0, 0.2]])
    target = annealed_classification_target(LABELS, TEACHER_LOGITS, 0.5)
    expected = -(target * torch.log_softmax(student, -1)).sum(-1)
    torch.testing.assert_close(soft_cross_entropy(student, target), expected)
    # With a one-hot target it is the ordinary cross-entropy.
    torch.testing.assert_close(
        soft_cross_entropy(student, ONEHOT), torch.nn.functional.cross_entropy(student, LABELS, reduction="none")
    )


def test_arms():
    # fixed: constant teacher weight distill_weight, whatever lambda is.
    fixed = classification_target("fixed", LABELS, TEACHER_LOGITS, 3, annealing=0.9, distill_weight=0.3)
    torch.testing.assert_close(fixed, 0.7 * ONEHOT + 0.3 * TEACHER_PROBS)
    # labels: hard labels always.
    torch.testing.assert_close(classification_target("labels", LABELS, None, 3, 0.0, 0.5), ONEHOT)
    # smoothing-annealed: uniform at lambda 0, hard labels at lambda 1, no teacher needed.
    torch.testing.assert_close(classification_target("smoothing-annealed", LABELS, None, 3, 0.0, 0.5), torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(classification_target("smoothing-annealed", LABELS, None, 3, 1.0, 0.5), ONEHOT)
    labels = torch.tensor([0.8, 0.2])
    torch.testing.assert_close(regression_target("smoothing-annealed", labels, None, 0.5, 0.5, 0.5), torch.tensor([0.65, 0.35]))
    torch.testing.assert_close(regression_target("fixed", labels, torch.tensor([0.0, 0.0]), 0.5, 0.0, 0.25), 0.75 * labels)
    with pytest.raises(UserError, match="unknown bam.targets"):
        classification_target("soft", LABELS, TEACHER_LOGITS, 3, 0.5, 0.5)
