"""The fast-training options (weight averaging, label smoothing, TTA, the triangle schedule, norm-layer lr, the
alternating flip, reflect padding) and the airbench network family, each against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bornagain_kd.config import load_config
from bornagain_kd.distill.ban_losses import resolve_loss
from bornagain_kd.engine.averaging import AveragingSettings, WeightAverage, averaging_decay
from bornagain_kd.engine.schedules import triangle_factor
from bornagain_kd.errors import UserError
from bornagain_kd.models import create_model
from bornagain_kd.models.airbench import patches_of, whitening_filters
from bornagain_kd.pipelines.classifier import build_optimizer, build_scheduler, with_label_smoothing
from bornagain_kd.vision.augment import random_crop_flip
from bornagain_kd.vision.batches import tta_logits
from bornagain_kd.vision.config import VisionConfig


def _cfg(*overrides: str) -> VisionConfig:
    return load_config(VisionConfig, None, list(overrides))


# ------------------------------------------------------------------------------------------ weight averaging


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.norm(self.linear(x))


def _train_steps(model, steps, average=None):
    """SGD steps on fixed random data; the average updated after each."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots = []
    for step in range(1, steps + 1):
        x = torch.randn(8, 3, generator=gen)
        loss = model(x).pow(2).mean() + model.linear.weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if average is not None:
            average.after_step(model, step)
    return snapshots


@pytest.mark.parametrize("every, power", [(1, 0.0), (3, 0.0), (2, 3.0)])
def test_ema_weights_equal_a_hand_computation(every, power):
    torch.manual_seed(0)
    model = Tiny()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = AveragingSettings("ema", decay=0.9, every=every, warmup_power=power)
    steps = 7
    average = WeightAverage(model, settings, total_steps=steps)
    snapshots = _train_steps(model, steps, average)
    expected = {k: v.clone() for k, v in start.items() if v.is_floating_point()}
    for step, snap in enumerate(snapshots, start=1):
        if step % every:
            continue
        d = 0.9 ** every * (step / steps) ** power if power else min(0.9, (1 + step) / (10 + step)) ** every
        expected = {k: d * expected[k] + (1 - d) * snap[k] for k in expected}
    got = average.state_dict()
    assert set(got) == set(expected)  # floating entries only: num_batches_tracked is not averaged
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)
    # the live weights kept training (ema mode): they are the last step's, not the average
    torch.testing.assert_close(model.linear.weight, snapshots[-1]["linear.weight"])
    assert not torch.allclose(model.linear.weight, got["linear.weight"])


def test_lookahead_sets_the_live_weights_to_the_average():
    torch.manual_seed(0)
    model = Tiny()
    start = model.linear.weight.detach().clone()
    average = WeightAverage(model, AveragingSettings("lookahead", decay=0.5, every=2, warmup_power=1.0),
                            total_steps=4)
    snapshots = _train_steps(model, 4, average)  # the live weights after each optimiser step (before averaging)
    # step 2: d = 0.5^2 (2/4) -> avg = d w0 + (1 - d) w2; step 4: d = 0.25 -> avg = d avg + (1 - d) w4
    d2, d4 = 0.25 * 0.5, 0.25 * 1.0
    expected = d2 * start + (1 - d2) * snapshots[1]["linear.weight"]
    expected = d4 * expected + (1 - d4) * snapshots[3]["linear.weight"]
    torch.testing.assert_close(average.state_dict()["linear.weight"], expected)
    torch.testing.assert_close(model.linear.weight, expected)  # lookahead: training goes on from the average


def test_averaged_weights_are_applied_for_a_block_only():
    torch.manual_seed(0)
    model = Tiny()
    average = WeightAverage(model, AveragingSettings("ema", decay=0.9), total_steps=5)
    _train_steps(model, 5, average)
    live = model.linear.weight.detach().clone()
    with average.applied(model):
        torch.testing.assert_close(model.linear.weight, average.state_dict()["linear.weight"])
    torch.testing.assert_close(model.linear.weight, live)


def test_the_decay_warms_up_with_the_run():
    s = AveragingSettings("ema", decay=0.95, every=5, warmup_power=3.0)
    assert averaging_decay(10, 100, s) == pytest.approx(0.95 ** 5 * 0.1 ** 3)
    assert averaging_decay(100, 100, s) == pytest.approx(0.95 ** 5)
    timm = AveragingSettings("ema", decay=0.95)  # no power: timm's warm-up, then the decay
    assert averaging_decay(1, 100, timm) == pytest.approx(2 / 11)
    assert averaging_decay(500, 1000, timm) == pytest.approx(0.95)


def test_bad_averaging_values_are_refused():
    for bad in ("train.ema_decay=1.0", "train.ema_every_steps=0", "train.ema_warmup_power=-1",
                "train.weight_averaging=swa"):
        with pytest.raises(UserError):
            _cfg(bad)


# ------------------------------------------------------------------------------------- test-time augmentation


class Asymmetric(nn.Module):
    """Logits that depend on where in the image the mass is: a flip or a shift changes them."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3 * 6 * 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def test_flip_tta_is_the_mean_of_the_flipped_and_unflipped_predictions():
    model = Asymmetric()
    x = torch.randn(5, 3, 6, 6)
    expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(tta_logits(model, x, "flip"), expected)
    assert not torch.allclose(tta_logits(model, x, "flip"), model(x))
    torch.testing.assert_close(tta_logits(model, x, "off"), model(x))


def test_flip_shift_tta_adds_the_one_pixel_shifts():
    model = Asymmetric()
    x = torch.randn(2, 3, 6, 6)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")

    def flip_mean(batch):
        return (model(batch) + model(batch.flip(3))) / 2

    expected = 0.5 * flip_mean(x) + 0.25 * flip_mean(padded[:, :, :6, :6]) + 0.25 * flip_mean(padded[:, :, 2:, 2:])
    torch.testing.assert_close(tta_logits(model, x, "flip-shift"), expected)


def test_a_run_with_tta_reports_the_tta_predictions(tmp_path):
    """End to end: the test probabilities a run saves are softmax(mean of flipped and unflipped logits)."""
    from bornagain_kd import api
    from bornagain_kd.engine.checkpoint import load_weights
    from bornagain_kd.pipelines.ban import build_model
    from bornagain_kd.reports.ensembles import load_probs
    from bornagain_kd.vision.batches import BatchPipeline
    from bornagain_kd.vision.prepare import prepare_data

    out = tmp_path / "run"
    overrides = ["train.epochs=1", "train.tta=flip", "train.precision=fp32", "train.compile=false",
                 "train.progress=false", "train.trackers=[]", "data.hflip=true", "train.channels_last=false"]
    results = api.train(None, overrides=overrides, output=out)
    assert results["tta"] == "flip"
    cfg = _cfg(*overrides)
    data = prepare_data(cfg.data, cfg.seed)
    model = load_weights(build_model(cfg, cfg.model.name, data), out / "model.safetensors").eval()
    x = BatchPipeline(data.mean, data.std, torch.device("cpu"))(data.test_images)
    with torch.no_grad():
        expected = ((model(x) + model(x.flip(3))) / 2).softmax(1)
    probs, _ = load_probs(out / "test_probs.safetensors")
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ the triangle schedule


def test_triangle_schedule_learning_rates_match_their_formula():
    cfg = _cfg("train.schedule=triangle", "train.triangle=[0.2,0.25,0.05]", "train.epochs=4", "train.lr=0.8")
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg.train)
    steps_per_epoch = 5
    total = steps_per_epoch * cfg.train.epochs  # 20: peak at step 5
    scheduler = build_scheduler(opt, cfg.train, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(total + 1):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    expected = [0.8 * (0.2 + 0.8 * s / 5) if s <= 5 else 0.8 * (1 + (0.05 - 1) * (s - 5) / 15) for s in range(total + 1)]
    np.testing.assert_allclose(seen, expected, rtol=1e-9)
    assert max(seen) == pytest.approx(0.8) and seen[5] == pytest.approx(0.8)
    assert triangle_factor(20, 20, start=0.2, peak_at=0.25, end=0.05) == pytest.approx(0.05)


def test_a_bad_triangle_is_refused():
    with pytest.raises(UserError, match="train.triangle"):
        _cfg("train.triangle=[0.2,1.5,0.1]")


# ------------------------------------------------------------------------------ norm-layer lr, label smoothing


def test_norm_parameters_get_their_own_lr_and_the_same_decay_per_step():
    cfg = _cfg("model.name=airbench-8-8-8", "train.norm_lr_scale=64", "train.lr=0.5", "train.weight_decay=0.01")
    model = create_model("airbench-8-8-8", num_classes=10)
    opt = build_optimizer(model, cfg.train)
    other, norm_group = opt.param_groups
    norms = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in norm_group["params"]} == norms
    assert norm_group["lr"] == pytest.approx(32.0) and other["lr"] == pytest.approx(0.5)
    # SGD's decay step is lr x wd: equal in both groups
    assert norm_group["lr"] * norm_group["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"])
    # frozen parameters (the whitening stem, the batch norms' scales) are in no group
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & {id(p) for g in opt.param_groups for p in g["params"]}


def test_label_smoothing_reaches_the_label_term_of_every_preset():
    logits, teacher = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.randint(0, 5, (6,))
    ce = with_label_smoothing(resolve_loss("ce"), 0.2)(logits, None, labels)
    torch.testing.assert_close(ce["loss"], F.cross_entropy(logits, labels, label_smoothing=0.2))
    torch.testing.assert_close(ce["label_loss"], F.cross_entropy(logits, labels))  # logged: the plain CE
    ban = with_label_smoothing(resolve_loss("ban+l", label_weight=0.5, teacher_weight=0.5), 0.2)
    plain = resolve_loss("ban+l", label_weight=0.5, teacher_weight=0.5)(logits, teacher, labels)
    smoothed = ban(logits, teacher, labels)
    torch.testing.assert_close(smoothed["loss"] - plain["loss"],
                               0.5 * (F.cross_entropy(logits, labels, label_smoothing=0.2)
                                      - F.cross_entropy(logits, labels)))
    assert with_label_smoothing(resolve_loss("ce"), 0.0) == resolve_loss("ce")
    # CWTM: the confidence-weighted label CE, smoothed
    confidence = teacher.softmax(1).max(1).values
    weights = confidence / confidence.mean()
    cwtm = with_label_smoothing(resolve_loss("cwtm"), 0.2)(logits, teacher, labels)
    torch.testing.assert_close(cwtm["loss"], (weights * F.cross_entropy(logits, labels, reduction="none",
                                                                        label_smoothing=0.2)).mean())
    # DKPP: its label term (weight 1 here; its teacher term draws a permutation: same seed for both calls)
    dkpp = with_label_smoothing(resolve_loss("dkpp", label_weight=1.0, teacher_weight=0.0), 0.2)
    torch.testing.assert_close(dkpp(logits, teacher, labels)["loss"], F.cross_entropy(logits, labels, label_smoothing=0.2))


# ----------------------------------------------------------------------------- alternating flip, reflect padding


def test_reflect_padding_crops_the_reflect_padded_image():
    images = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, pad=2, hflip=True, generator=gen, pad_mode="reflect")
    gen = torch.Generator().manual_seed(3)
    dy, dx, flip = (torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen),
                    torch.randint(0, 2, (6,), generator=gen).bool())
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        window = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        expected = window.flip(2) if flip[i] else window
        torch.testing.assert_close(out[i].float(), expected)


def test_alternating_flip_flips_every_image_the_other_way_each_epoch():
    from bornagain_kd.engine.distributed import current
    from bornagain_kd.pipelines.classifier import ClassifierTask, RunSpec
    from bornagain_kd.vision.prepare import prepare_data

    cfg = _cfg("data.flip_mode=alternate", "data.hflip=true", "data.crop_padding=0", "train.batch_size=2000",
               "train.last_batch=drop")
    data = prepare_data(cfg.data, cfg.seed)
    task = ClassifierTask(cfg, data, RunSpec("t", cfg.model.name, 0, resolve_loss("ce")), lambda: None,
                          torch.device("cpu"))
    seen = {}
    pipe = task.train_pipe

    def recording(images, generator, flip):
        x = pipe(images, generator, flip)
        seen["x"], seen["flip"] = x, flip
        return x

    task.train_pipe = recording
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    flips = []
    for epoch in range(3):
        (index,) = task.epoch_batches(epoch, current())
        task.loss(model, index, step=epoch)
        plain = task.eval_pipe(data.train_images[index])
        expected = torch.where(seen["flip"][:, None, None, None], plain.flip(3), plain)
        torch.testing.assert_close(seen["x"], expected)  # the images were flipped as the schedule says
        flips.append(seen["flip"][torch.argsort(index)])  # by image
    assert 0.4 < flips[0].float().mean() < 0.6  # random in the first epoch
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0])


# ----------------------------------------------------------------------------------------- the airbench family


def test_the_whitening_stem_whitens_patches_of_the_training_images():
    gen = torch.Generator().manual_seed(0)
    # correlated "images": smooth noise, so the patch covariance is far from the identity
    images = F.avg_pool2d(torch.randn(200, 3, 18, 18, generator=gen), 3, stride=1)  # (200, 3, 16, 16)
    model = create_model("airbench-8-8-8", num_classes=10)
    model.fit_to_data(images)
    responses = F.conv2d(images, model.stem.weight)  # (n, 24, 15, 15), bias left out
    half = responses[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()  # the 12 eigen-directions
    covariance = half.T @ half / half.shape[0]
    eigenvalues = torch.linalg.eigvalsh(patches_of(images, 2).double().T @ patches_of(images, 2).double() / half.shape[0])
    expected = torch.diag(eigenvalues.flip(0) / (eigenvalues.flip(0) + 5e-4))  # 1 where a direction's variance >> eps
    torch.testing.assert_close(covariance, expected, atol=1e-4, rtol=1e-3)
    raw = patches_of(images, 2).double()
    assert (raw.T @ raw / raw.shape[0] - torch.eye(12, dtype=torch.double)).abs().max() > 0.1  # it was not white
    torch.testing.assert_close(model.stem.weight[12:], -model.stem.weight[:12])  # and their negatives
    assert not model.stem.weight.requires_grad


def test_whitening_filters_are_fitted_when_a_run_builds_the_model():
    from bornagain_kd.pipelines.classifier import ClassifierTask, RunSpec
    from bornagain_kd.vision.prepare import prepare_data

    cfg = _cfg("model.name=airbench-8-8-8")
    data = prepare_data(cfg.data, cfg.seed)
    task = ClassifierTask(cfg, data, RunSpec("t", cfg.model.name, 0, resolve_loss("ce")),
                          lambda: create_model("airbench-8-8-8", num_classes=10, in_channels=1), torch.device("cpu"))
    model = task.build_model()
    images = task.eval_pipe(data.train_images[:5000])
    torch.testing.assert_close(model.stem.weight.contiguous(), whitening_filters(images, 2, 5e-4).contiguous())


def test_airbench94_network_has_airbench94s_parameters():
    from bornagain_kd.models import count_parameters

    model = create_model("airbench-64-256-256", num_classes=10)
    # conv weights: 24*3*2*2 stem (+24 bias), 64*24*9, 64*64*9, 256*64*9, 256*256*9 x 3, head 256*10
    convs = 24 * 12 + 24 + 64 * 24 * 9 + 64 * 64 * 9 + 256 * 64 * 9 + 3 * 256 * 256 * 9 + 256 * 10
    norms = 2 * 2 * (64 + 256 + 256)  # weight and bias of six batch norms
    assert count_parameters("airbench-64-256-256", 10) == convs + norms
    # Dirac init: the first in-channels outputs of a conv pass their input through
    conv = model.groups[1].conv2
    x = torch.randn(1, 256, 5, 5)
    torch.testing.assert_close(F.conv2d(x, conv.weight, padding=1)[:, :256], x)


@pytest.mark.slow
def test_a_compiled_airbench_step_under_bf16_autocast_has_finite_gradients():
    """Regression: the global max over the last map was torch.amax, whose compiled backward under bf16 autocast
    (torch 2.13, CPU, channels_last) found no maximum to send the gradient to and gave NaN at the second step."""
    torch.manual_seed(0)
    model = create_model("airbench-16-32-32", num_classes=10).to(memory_format=torch.channels_last)
    model.fit_to_data(torch.randn(100, 3, 32, 32))
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        out = torch.compile(model)(x)
    F.cross_entropy(out.float(), torch.randint(0, 10, (64,))).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_run_with_averaging_keeps_the_average_as_its_weights(tmp_path):
    """Through the engine: an average never updated (its period longer than the run) stays the initial weights, and
    the run's final weights (model.safetensors) and its test predictions are the average's, while the weights it
    trained moved far."""
    from bornagain_kd import api
    from bornagain_kd.engine.rng import seed_everything
    from bornagain_kd.pipelines.ban import build_model
    from bornagain_kd.vision.prepare import prepare_data
    from safetensors.torch import load_file

    base = ["train.epochs=2", "train.precision=fp32", "train.compile=false", "train.progress=false",
            "train.trackers=[]", "train.channels_last=false"]
    averaged_run = api.train(None, overrides=[*base, "train.weight_averaging=ema", "train.ema_every_steps=100000"],
                             output=tmp_path / "ema")
    results = api.train(None, overrides=base, output=tmp_path / "off")
    cfg = _cfg(*base)
    seed_everything(cfg.seed)  # as the engine does before it builds the model
    initial = build_model(cfg, cfg.model.name, prepare_data(cfg.data, cfg.seed)).state_dict()
    averaged, trained = load_file(tmp_path / "ema" / "model.safetensors"), load_file(tmp_path / "off" / "model.safetensors")
    for key in initial:
        if initial[key].is_floating_point():
            assert torch.equal(averaged[key], initial[key]), key
    assert (trained["classifier.weight"] - initial["classifier.weight"]).abs().max() > 1e-2
    assert averaged_run["weight_averaging"]["mode"] == "ema" and "weight_averaging" not in results
    # evaluated with the average: an untrained network's test accuracy, far below the trained one's
    assert averaged_run["test_accuracy"] < 30 < results["test_accuracy"]


@pytest.mark.parametrize("option", ["train.tta=flip", "data.flip_mode=alternate"])
def test_flip_options_on_a_dataset_that_is_never_flipped_are_refused_before_anything_is_written(tmp_path, option):
    from bornagain_kd import api

    with pytest.raises(UserError, match="data.hflip"):
        api.train(None, overrides=["train.epochs=1", option], output=tmp_path / "run")  # digits: hflip off
    assert not (tmp_path / "run").exists()
