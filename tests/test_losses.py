import math

import pytest
import torch
import torch.nn.functional as F

from bornagain_kd.distill.ban_losses import (born_again_loss, born_again_loss_parts, cwtm_loss_parts, dkpp_loss_parts,
                              permute_non_argmax)
from bornagain_kd.errors import UserError
from bornagain_kd.vision.config import BanConfig


def _batch(seed=0, b=6, c=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g), torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)


def test_born_again_loss_matches_the_equation_by_hand():
    s, t, y = _batch()
    T, lw, tw = 3.0, 0.7, 1.3
    p_t = torch.softmax(t / T, 1)
    log_p_s = torch.log_softmax(s / T, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()  # batch mean of per-example KL
    ce = -torch.log_softmax(s, 1)[torch.arange(len(y)), y].mean()
    expected = lw * ce + tw * T**2 * kl
    got = born_again_loss(s, t, y, label_weight=lw, teacher_weight=tw, temperature=T)
    assert torch.allclose(got, expected, atol=1e-6)


def test_kd_term_is_zero_when_student_equals_teacher():
    s, _, y = _batch()
    parts = born_again_loss_parts(s, s.clone(), y, temperature=4.0)
    assert abs(float(parts["kd_loss"])) < 1e-6
    assert torch.allclose(parts["loss"], F.cross_entropy(s, y), atol=1e-6)


def test_kd_gradient_scale_is_kept_by_t_squared():
    # For large T the T^2-scaled KD gradient tends to (z_s - z_t)/(C*b) (Hinton et al.): it must not vanish.
    s, t, y = _batch(1)
    grads = []
    for T in (10.0, 40.0):
        z = s.clone().requires_grad_(True)
        born_again_loss(z, t, y, label_weight=0.0, teacher_weight=1.0, temperature=T).backward()
        grads.append(z.grad.norm())
    assert grads[1] / grads[0] == pytest.approx(1.0, rel=0.05)


def test_teacher_only_preset_ignores_labels():
    s, t, y = _batch(2)
    lw, tw, T = BanConfig(loss="ban").weights()
    a = born_again_loss(s, t, y, label_weight=lw, teacher_weight=tw, temperature=T)
    b = born_again_loss(s, t, (y + 1) % 5, label_weight=lw, teacher_weight=tw, temperature=T)
    assert lw == 0 and torch.equal(a, b)


def test_presets_and_overrides():
    paper = dict(normalize_loss_weights=False)  # Eq. 2 exactly
    assert BanConfig(loss="ban+l", **paper).weights() == (1.0, 1.0, 1.0)
    assert BanConfig(loss="ban", temperature=2.0, **paper).weights() == (0.0, 1.0, 2.0)
    assert BanConfig(loss="ban+l", teacher_weight=0.5, **paper).weights() == (1.0, 0.5, 1.0)


def test_default_normalises_the_weights_to_sum_one():
    assert BanConfig(loss="ban+l").weights() == (0.5, 0.5, 1.0)
    assert BanConfig(loss="ban", temperature=2.0).weights() == (0.0, 1.0, 2.0)  # one zero weight: unchanged
    assert BanConfig(loss="cwtm").weights() == (1.0, 0.0, 1.0)
    assert BanConfig(loss="ban+l", label_weight=1.0, teacher_weight=3.0).weights() == (0.25, 0.75, 1.0)


def test_cwtm_weights_examples_by_teacher_confidence():
    s, t, y = _batch(3)
    conf = torch.softmax(t, 1).max(1).values
    w = conf / conf.sum()
    ce = F.cross_entropy(s, y, reduction="none")
    parts = cwtm_loss_parts(s, t, y)
    assert torch.allclose(parts["loss"], (w * ce).sum(), atol=1e-6)
    # a uniformly confident teacher gives the plain mean CE
    flat = torch.zeros_like(t)
    assert torch.allclose(cwtm_loss_parts(s, flat, y)["loss"], ce.mean(), atol=1e-6)


def test_dkpp_permutation_keeps_argmax_and_the_multiset():
    p = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 2, 1)
    q = permute_non_argmax(p, torch.Generator().manual_seed(1))
    assert torch.equal(p.argmax(1), q.argmax(1))
    assert torch.allclose(p.gather(1, p.argmax(1, keepdim=True)), q.gather(1, q.argmax(1, keepdim=True)))
    assert torch.allclose(p.sort(1).values, q.sort(1).values)
    assert (p - q).abs().sum(1).gt(0).float().mean() > 0.9  # the non-argmax mass really moved
    s, t, y = _batch(4)
    parts = dkpp_loss_parts(s, t, y, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(float(parts["loss"]))


def test_mismatched_class_counts_are_a_clear_error():
    with pytest.raises(UserError, match="same number of classes"):
        born_again_loss(torch.randn(2, 5), torch.randn(2, 7), torch.tensor([0, 1]))
