"""Match students (BAN Table 2): widths follow the teacher, the stem and the
classifier can be shared, and sharing copies exactly, freezes, and refuses
mismatches before touching anything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models import (
    check_shareable,
    count_parameters,
    create_model,
    match_parameter_table,
    render_parameter_table,
    share_stem_and_head,
)

TEACHER = "densenet-bc-40-12"  # units (6, 6, 6): stem 24, t = (48, 60, 66), final width F = 132


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: one intra-op thread is fastest, and on a shared 2-core
    # machine OpenMP workers spin-waiting for a busy core cost seconds per step
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model(TEACHER, num_classes=10)


@pytest.mark.parametrize(
    "name",
    [
        "match-wrn-1-0.5",
        "match-wrn-2-1",
        "match-preresnet-1-1",
        "match-preresnet-2-0.5",
        "match-densenet-2-1-2",
        "match-densenet-3-0.5-1",
    ],
)
def test_match_students_run_and_fit_the_teacher(name, teacher):
    torch.manual_seed(1)
    student = create_model(name, num_classes=10, teacher=TEACHER)
    logits = student(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    assert student.stem.weight.shape == teacher.stem.weight.shape == (24, 3, 3, 3)
    assert student.classifier.weight.shape == teacher.classifier.weight.shape == (10, 132)
    assert student.num_features == teacher.num_features == 132
    check_shareable(teacher, student)


def _stage_widths(model) -> list[int]:
    widths = []
    for unit in model.features:
        out = unit.conv3.out_channels if hasattr(unit, "conv3") else unit.conv2.out_channels
        if not widths or widths[-1] != out:
            widths.append(out)
    return widths


def test_match_wrn_widths_follow_the_rule():
    model = create_model("match-wrn-2-1", 10, teacher=TEACHER)
    assert _stage_widths(model) == [48, 60, 66]  # round(R * t_b), t_3 = 132 / 2
    assert isinstance(model.head.projection, nn.Sequential)  # 66 -> 132 before the classifier
    wide = create_model("match-wrn-2-2", 10, teacher=TEACHER)
    assert _stage_widths(wide) == [96, 120, 132]
    assert isinstance(wide.head.projection, nn.Identity)  # last stage already F wide
    assert _stage_widths(create_model("match-wrn-1-0.5", 10, teacher=TEACHER)) == [24, 30, 33]


def test_match_preresnet_ratio_scales_the_bottleneck():
    model = create_model("match-preresnet-1-0.5", 10, teacher=TEACHER)
    assert _stage_widths(model) == [48, 60, 66]  # residual widths = t_b
    assert [u.conv2.out_channels for u in model.features] == [6, 8, 8]  # round(0.5 * t_b / 4), half up


def test_match_densenet_1_2_with_the_teachers_units_is_the_teacher():
    # N-1-2 with N = the teacher's units per block rebuilds the teacher exactly
    student = create_model("match-densenet-6-1-2", 100, teacher=TEACHER)
    teacher = create_model(TEACHER, 100)
    assert {k: v.shape for k, v in student.state_dict().items()} == {
        k: v.shape for k, v in teacher.state_dict().items()
    }
    # more units at the same block widths: smaller growth, fewer parameters (the paper's 28/42/56-1-2 trend)
    counts = [count_parameters(f"match-densenet-{n}-1-2", 100, teacher="densenet-bc-90-60") for n in (14, 28, 56)]
    assert counts[0] > counts[1] > counts[2]


def test_match_errors():
    with pytest.raises(UserError, match="DenseNet-BC teacher"):
        create_model("match-wrn-1-1", 10, teacher="wrn-16-2")
    with pytest.raises(UserError, match="unknown model"):
        create_model("match-wrn-1-1", 10, teacher="densenet-90-60")
    with pytest.raises(UserError, match="cannot grow"):
        create_model("match-densenet-2-1-0.5", 10, teacher=TEACHER)
    with pytest.raises(UserError, match="positive integer"):
        create_model("match-wrn-1.5-1", 10, teacher=TEACHER)


def test_match_parameter_table_covers_table_2():
    rows = match_parameter_table(num_classes=100)
    names = [r["network"] for r in rows]
    assert len(rows) == 16 and names[0] == "Pre-activation ResNet-1001"
    assert "Match-DenseNet-56-1-2" in names and "Wide-ResNet-28-20" in names
    by_name = {r["network"]: r for r in rows}
    assert by_name["Match-Wide-ResNet-1-1"]["params"] == count_parameters(
        "match-wrn-1-1", 100, teacher="densenet-bc-90-60"
    )
    # the standard architectures reproduce their published counts
    for network in ("Pre-activation ResNet-1001", "Wide-ResNet-28-10", "Wide-ResNet-28-20"):
        assert abs(by_name[network]["diff_pct"]) < 2
    # our Match-Wide-ResNet rule lands close to the paper (a regression guard on the rule)
    for network in ("Match-Wide-ResNet-1-1", "Match-Wide-ResNet-2-1", "Match-Wide-ResNet-4-0.5"):
        assert abs(by_name[network]["diff_pct"]) < 10
    text = render_parameter_table(rows)
    assert text.count("\n") == len(rows) + 2 and "| Match-Pre-ResNet-14-1 |" in text


def test_share_stem_and_head_copies_and_freezes(teacher):
    torch.manual_seed(2)
    student = create_model("match-wrn-1-1", 10, teacher=TEACHER)
    assert not torch.equal(student.stem.weight, teacher.stem.weight)
    share_stem_and_head(teacher, student)
    assert torch.equal(student.stem.weight, teacher.stem.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.classifier.bias, teacher.classifier.bias)
    shared = [student.stem.weight, student.classifier.weight, student.classifier.bias]
    assert not any(p.requires_grad for p in shared)
    # a copy, not the same tensors: training the student never touches the teacher
    assert student.stem.weight.data_ptr() != teacher.stem.weight.data_ptr()

    before = [p.clone() for p in shared]
    body_before = student.features[0].conv1.weight.clone()
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    student(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, shared))
    assert not torch.equal(body_before, student.features[0].conv1.weight)


def test_share_without_freezing_keeps_them_trainable(teacher):
    student = create_model("match-densenet-2-1-2", 10, teacher=TEACHER)
    share_stem_and_head(teacher, student, freeze=False)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert student.stem.weight.requires_grad and student.classifier.weight.requires_grad


def test_share_through_a_wrapper(teacher):
    class Wrapper(nn.Module):  # stands in for DistributedDataParallel's .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    student = create_model("match-wrn-1-1", 10, teacher=TEACHER)
    share_stem_and_head(Wrapper(teacher), Wrapper(student))
    assert torch.equal(student.stem.weight, teacher.stem.weight)


def test_mismatch_fails_before_copying_anything(teacher):
    # same stem shape, different classifier (5 classes vs 10): the stem must stay untouched
    student = create_model("match-wrn-1-1", 5, teacher=TEACHER)
    stem_before = student.stem.weight.clone()
    with pytest.raises(UserError) as err:
        share_stem_and_head(teacher, student)
    message = str(err.value)
    assert "classifier.weight" in message and "(10, 132)" in message and "(5, 132)" in message
    assert "teacher=" in message  # says how to fix it
    assert torch.equal(student.stem.weight, stem_before) and student.stem.weight.requires_grad

    # a student built for another teacher: the stem already differs
    other = create_model("match-wrn-1-1", 10, teacher="densenet-bc-16-6")
    with pytest.raises(UserError, match=r"stem\.weight.*\(24, 3, 3, 3\).*\(12, 3, 3, 3\)"):
        check_shareable(teacher, other)
    with pytest.raises(UserError, match="its `stem` is missing.*no int `num_features`.*must expose"):
        check_shareable(teacher, nn.Linear(3, 3))
