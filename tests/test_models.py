"""The CIFAR model zoo: every registered family runs, counts match the
literature, the registry refuses bad names and duplicates."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models import count_parameters, create_model, list_models, parse_model_name, register_model
from bornagain_kd.models import registry
from bornagain_kd.models.match import densenet_parameter_table

SMALL_TEACHER = "densenet-bc-16-6"  # units (2, 2, 2), growth 6: tiny


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: one intra-op thread is fastest, and on a shared 2-core
    # machine OpenMP workers spin-waiting for a busy core cost seconds per step
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# One small member per registered family. A family added without an entry here
# makes test_every_family_has_a_small_instance fail.
SMALL = {
    "airbench-{w1}-{w2}-{w3}": ("airbench-8-8-8", {}),
    "densenet-bc-{depth}-{growth}": ("densenet-bc-16-6", {}),
    "wrn-{depth}-{width}": ("wrn-10-1", {}),
    "preresnet-{depth}": ("preresnet-11", {}),
    "resnet-{depth}": ("resnet-8", {}),
    "match-wrn-{units}-{ratio}": ("match-wrn-1-0.5", {"teacher": SMALL_TEACHER}),
    "match-preresnet-{units}-{ratio}": ("match-preresnet-1-1", {"teacher": SMALL_TEACHER}),
    "match-densenet-{units}-{in_ratio}-{out_ratio}": ("match-densenet-1-1-2", {"teacher": SMALL_TEACHER}),
}


def test_every_family_has_a_small_instance():
    assert sorted(SMALL) == list_models()


@pytest.mark.parametrize("pattern", list_models())
def test_family_forward_backward(pattern):
    name, kwargs = SMALL[pattern]
    torch.manual_seed(0)
    for in_channels, size, channels_last in [(3, 32, False), (1, 8, True)]:
        model = create_model(name, num_classes=7, in_channels=in_channels, **kwargs)
        x = torch.randn(2, in_channels, size, size)
        if channels_last:  # forward must not .view a channels_last conv output
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()
        logits.logsumexp(dim=1).sum().backward()
        for pname, p in model.named_parameters():  # frozen ones (airbench's whitening, its BN scales) get none
            assert (p.grad is not None) == p.requires_grad, f"{name}: {pname} got no gradient"
        # the attributes cross-architecture sharing relies on
        assert isinstance(model.stem, nn.Conv2d) and model.stem.in_channels == in_channels
        assert isinstance(model.classifier, nn.Linear)
        assert model.classifier.in_features == model.num_features
        assert model.classifier.out_features == 7


def _close(name: str, num_classes: int, expected_m: float, rel: float) -> None:
    got = count_parameters(name, num_classes) / 1e6
    assert abs(got - expected_m) <= rel * expected_m, f"{name}: {got:.3f}M vs {expected_m}M"


@pytest.mark.parametrize(
    "name, num_classes, expected_m, rel",
    [
        ("densenet-bc-100-12", 100, 0.80, 0.02),
        ("wrn-28-10", 100, 36.5, 0.02),
        ("wrn-28-20", 100, 146.0, 0.02),
        ("preresnet-164", 10, 1.7, 0.02),
        ("preresnet-1001", 100, 10.3, 0.02),
        ("resnet-20", 10, 0.27, 0.02),
        ("resnet-56", 10, 0.85, 0.02),
        ("resnet-110", 10, 1.7, 0.02),
    ],
)
def test_parameter_counts_match_the_literature(name, num_classes, expected_m, rel):
    _close(name, num_classes, expected_m, rel)


def test_exact_parameter_counts_of_reference_implementations():
    # DenseNet-BC-100-12 (Huang et al. code) and WRN-28-10 (Zagoruyko's code), CIFAR-10
    assert count_parameters("densenet-bc-100-12", 10) == 769_162
    assert count_parameters("wrn-28-10", 10) == 36_479_194
    assert count_parameters("resnet-20", 10) == 269_722  # option-A shortcuts: no parameters


def test_densenet_table_1_counts_within_15_percent():
    rows = densenet_parameter_table(num_classes=100)
    assert [r["network"] for r in rows] == [
        "DenseNet-BC-112-33", "DenseNet-BC-90-60", "DenseNet-BC-80-80", "DenseNet-BC-80-120"
    ]
    for r in rows:
        assert abs(r["diff_pct"]) < 15, r


def test_densenet_depth_rule_keeps_depth_exact():
    from bornagain_kd.models.densenet import densenet_block_units

    assert densenet_block_units(100) == (16, 16, 16)
    assert densenet_block_units(90) == (15, 14, 14)
    assert densenet_block_units(80) == (13, 13, 12)
    for depth in (40, 80, 90, 100, 112):
        assert 2 * sum(densenet_block_units(depth)) + 4 == depth


def test_names_parse_ints_floats_and_any_case():
    assert parse_model_name("match-wrn-4-0.5")[1] == {"units": 4, "ratio": 0.5}
    pattern, fields = parse_model_name("WRN-16-2")
    assert pattern == "wrn-{depth}-{width}" and fields == {"depth": 16, "width": 2}
    assert isinstance(fields["depth"], int)


def test_unknown_model_lists_the_families():
    with pytest.raises(UserError) as err:
        create_model("vgg-16", 10)
    for pattern in list_models():
        assert pattern in str(err.value)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("wrn-27-10", "6n+4"),
        ("resnet-21", "6n+2"),
        ("preresnet-100", "9n+2"),
        ("densenet-bc-41-12", "even"),
        ("wrn-28-0", "positive"),
        ("densenet-bc-40-0", "positive"),
    ],
)
def test_bad_numbers_give_a_clear_error(name, hint):
    with pytest.raises(UserError, match=re.escape(hint)):
        count_parameters(name, 10)


def test_bad_arguments_give_a_clear_error():
    with pytest.raises(UserError, match="does not take"):
        create_model("resnet-8", 10, dropout=0.3)
    with pytest.raises(UserError, match="num_classes"):
        create_model("resnet-8", 0)
    with pytest.raises(UserError, match="dropout"):
        create_model("wrn-10-1", 10, dropout=1.5)


def test_duplicate_registration_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("toy-{width}")
    def toy(width, num_classes, in_channels=3, name=""):
        return nn.Linear(width, num_classes)

    assert "toy-{width}" in list_models()
    assert isinstance(create_model("toy-4", 3), nn.Linear)
    with pytest.raises(UserError, match="already registered"):
        register_model("toy-{units}")  # same shape, different field name
    with pytest.raises(UserError, match="already registered"):
        register_model("wrn-{depth}-{width}")


def test_initialisation():
    torch.manual_seed(0)
    model = create_model("wrn-16-2", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
    conv = model.features[4].conv1  # (128, 64, 3, 3): fan_out 1152 != fan_in 576
    assert conv.weight.shape == (128, 64, 3, 3)
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # Kaiming normal, fan_out
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05


def test_wrn_dropout_option():
    ps = [m.p for m in create_model("wrn-10-1", 10).modules() if isinstance(m, nn.Dropout)]
    assert ps and all(p == 0.3 for p in ps)  # the CIFAR default
    assert not any(isinstance(m, nn.Dropout) for m in create_model("wrn-10-1", 10, dropout=0).modules())


def test_strided_shortcut_matches_a_strided_conv_and_survives_channels_last_backward():
    """PyTorch's CPU backward of a strided 1x1 channels_last convolution corrupted the heap
    (6 channels, 8x8 input: the process aborted). The shortcut must compute the same function as
    nn.Conv2d(stride=2) and run that backward many times in a fresh process without crashing."""
    import subprocess
    import sys

    from bornagain_kd.models.common import StridedConv1x1

    torch.manual_seed(0)
    shortcut = StridedConv1x1(6, 6, stride=2)
    plain = nn.Conv2d(6, 6, kernel_size=1, stride=2, bias=False)
    plain.weight.data.copy_(shortcut.weight.data)
    x = torch.randn(2, 6, 9, 9)
    expected = plain(x)
    assert torch.equal(shortcut(x), expected)  # contiguous input: the ordinary kernel, bit for bit
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(shortcut(x_cl), expected, atol=1e-6)
    code = (
        "import torch\n"
        "from bornagain_kd.models.common import StridedConv1x1\n"
        "torch.set_num_threads(1)\n"
        "for _ in range(400):\n"
        "    conv = StridedConv1x1(6, 6, stride=2).to(memory_format=torch.channels_last)\n"
        "    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()\n"
        "    conv(x).sum().backward()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
