"""One image-classification run on the engine: a BAN generation, a baseline, or `bornagain train`.

    run_dir/ (the engine's contract, engine/trainer.py, plus)
      test_probs.safetensors   softmax outputs on the test set (+ labels), for ensembles
      val_probs.safetensors    the same on the validation split

The whole dataset sits in memory as uint8 tensors; a batch is an index tensor into it,
augmented and normalised as a batch. The epoch's order is one permutation drawn from a
generator seeded by (run seed, epoch); rank 0 draws its augmentation from that same generator
(the single-process stream), every other rank from its own (its slice gets its own crops and
flips). The generators' states travel in the checkpoint, so a run resumes mid-epoch exactly.
The test set is evaluated once, after the last epoch, and selects nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
import time
from typing import Callable

import torch

from bornagain_kd.config import config_to_dict
from bornagain_kd.distill.ban_losses import ResolvedLoss
from bornagain_kd.engine.checkpoint import save_tensors
from bornagain_kd.engine.compile import compile_frozen, fused_optimizer_kwargs, maybe_compile
from bornagain_kd.engine.device import autocast
from bornagain_kd.engine.distributed import DistInfo, all_reduce_tensor, current, rank_slices
from bornagain_kd.engine.rng import derive_seed
from bornagain_kd.engine.run import is_finished, open_run, recorded_settings, reuse_finished
from bornagain_kd.engine.trainer import StepOutput, train
from bornagain_kd.errors import UserError
from bornagain_kd.models.registry import parameter_count
from bornagain_kd.engine.schedules import lr_factor_at_step
from bornagain_kd.pipelines.common import engine_settings, start_process
from bornagain_kd.pipelines.vision_speed import (decide_compiling, recorded_keys, remember, remember_teacher,
                                              resolve_vision_speed)
from bornagain_kd.engine.speed import speed_line
from bornagain_kd.reports.ensembles import load_probs  # noqa: F401  (re-exported: the saved probabilities of a run)
from bornagain_kd.reports.metrics import classification_metrics
from bornagain_kd.vision.batches import BatchPipeline, predict_logits
from bornagain_kd.vision.config import TrainConfig, VisionConfig, vision_settings
from bornagain_kd.vision.prepare import PreparedData
from bornagain_kd.vision.splits import iterate_batches

# A loss maps (student_logits, teacher_logits or None, labels) to {"loss", "label_loss", "kd_loss"}.
LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], dict]

__all__ = ["RunSpec", "ClassifierTask", "fit", "is_finished", "load_probs"]


@dataclass(frozen=True)
class RunSpec:
    """What distinguishes one run of a sequence (a BAN generation, a baseline) from another."""

    name: str  # "gen0", "gen1", "baseline", "train"
    model_name: str
    seed: int
    loss_fn: LossFn
    teacher: torch.nn.Module | None = None
    teacher_name: str | None = None  # the teacher's model name (its machine record's key), where it has one
    extra: dict | None = None  # copied into results.json (generation number, loss weights, ...)
    warmup_epochs: float = 0.0  # per-step linear lr warm-up of this run (ban.student_warmup_epochs for students)
    epoch_check: Callable[[dict], list[str]] | None = None
    """Called with each epoch's record; the warnings it returns are printed and kept (see the engine)."""


NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


def norm_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters of the model's normalisation layers (scales and shifts)."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}


def parameter_groups(model: torch.nn.Module, train: TrainConfig) -> list[dict]:
    """SGD's groups: the normalisation layers' parameters apart where train.norm_lr_scale or norm_weight_decay
    asks for it. The norm group's decay is divided by its lr scale: SGD's decay step is lr x wd x w, so both
    groups decay at the same rate per step (airbench94's bias scaler). Frozen (shared) layers are left out: no
    weight decay creeps into them either."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm_wd = train.weight_decay if train.norm_weight_decay is None else train.norm_weight_decay
    if train.norm_lr_scale == 1.0 and norm_wd == train.weight_decay:
        return [{"params": params}]
    norms = norm_parameters(model)
    return [g for g in (
        {"params": [p for p in params if id(p) not in norms]},  # first: the epoch record's lr is the first group's
        {"params": [p for p in params if id(p) in norms], "lr": train.lr * train.norm_lr_scale,
         "weight_decay": norm_wd / train.norm_lr_scale},
    ) if g["params"]]


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.SGD:
    groups = parameter_groups(model, train)
    device = groups[0]["params"][0].device if groups[0]["params"] else torch.device("cpu")
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov and train.momentum > 0,
                           weight_decay=train.weight_decay, **fused_optimizer_kwargs(torch.optim.SGD, device))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, *, steps_per_epoch: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR, stepped after every batch: the epoch's schedule factor times the warm-up."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor_at_step(step, steps_per_epoch=steps_per_epoch, epochs=train.epochs,
                                       schedule=train.schedule, milestones=train.milestones, gamma=train.gamma,
                                       warmup_epochs=train.warmup_epochs, warmup_steps=warmup_steps,
                                       triangle=tuple(train.triangle)),
    )


class ClassifierTask:
    """The engine's view of one classification run (see the engine's Task protocol)."""

    def __init__(self, cfg: VisionConfig, data: PreparedData, spec: RunSpec,
                 make_model: Callable[[], torch.nn.Module], device: torch.device):
        self.cfg, self.data, self.spec, self.make_model, self.device = cfg, data, spec, make_model, device
        self.name, self.epochs = spec.name, cfg.train.epochs
        self.dist = current()
        self.batch_size, self.batch_key = cfg.train.batch_size, "train.batch_size"  # the engine splits it
        train = cfg.train
        self.train_pipe = BatchPipeline(data.mean, data.std, device, augment=cfg.data.augment, pad=data.crop_pad,
                                        hflip=data.hflip, channels_last=train.channels_last,
                                        pad_mode=cfg.data.pad_mode, style=data.augment_style,
                                        rrc_scale=tuple(cfg.data.rrc_scale))
        # data.flip_mode=alternate: image i is flipped in epoch e iff base_flip[i] xor (e odd) -- a pure function
        # of (seed, image, epoch), so a resumed run and every rank agree without keeping any state
        self.base_flip = (torch.randint(0, 2, data.train_labels.shape, generator=torch.Generator().manual_seed(
            derive_seed(spec.seed, "alternating-flip"))).bool() if cfg.data.flip_mode == "alternate" else None)
        self.epoch = 0
        self.loss_fn = with_label_smoothing(spec.loss_fn, train.label_smoothing)
        check_flips(cfg, data)
        self.eval_pipe = BatchPipeline(data.mean, data.std, device, channels_last=train.channels_last)
        self.order_generator = self.aug_generator = None
        # The uint8 training set stays on the GPU when it fits in a quarter of the free memory (CIFAR: 150 MB):
        # a batch is then gathered there, and nothing crosses the bus per step but the index.
        self.train_images, self.train_labels = data.train_images, data.train_labels
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if data.train_images.numel() + 8 * data.train_labels.numel() < free // 4:
                self.train_images, self.train_labels = data.train_images.to(device), data.train_labels.to(device)
                if self.base_flip is not None:  # indexed by the step's index tensor where it lives: no host sync
                    self.base_flip = self.base_flip.to(device)
        self.teacher_precision = cfg.ban.teacher_precision or train.precision
        self.teacher, self.compiles = spec.teacher, False
        if spec.teacher is not None:  # compiled with frozen weights (ban.teacher_compile, resolved by fit)
            if cfg.ban.teacher_compile == "student":  # a run recorded before the key: a plain compile, as it began
                self.teacher, self.compiles = maybe_compile(spec.teacher, enabled=train.compile is True,
                                                            mode=train.compile_mode, announce=False)
            else:  # a compiled student announces a machine that cannot compile; an eager one leaves it to the teacher
                self.teacher, self.compiles = compile_frozen(spec.teacher, enabled=cfg.ban.teacher_compile is True,
                                                             mode=train.compile_mode,
                                                             announce=self.dist.is_main and not train.compile)
        # The teacher's forward seconds, for the machine's record (fit: remember_teacher). Timed on a CPU only,
        # where an operation has finished when it returns; a GPU would need a host synchronisation per step.
        self.teacher_timing = ({"calls": 0, "seconds": 0.0, "compiled": self.compiles}
                               if spec.teacher is not None and device.type == "cpu" else None)

    def build_model(self) -> torch.nn.Module:
        model = self.make_model()  # fresh initialisation from this run's seed (identical on every rank)
        if callable(getattr(model, "fit_to_data", None)):  # a data-dependent layer (airbench's whitening stem)
            model.fit_to_data(self.eval_pipe(self.data.train_images[:WHITENING_IMAGES]).to(next(model.parameters()).device))
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, model, steps_per_epoch: int):
        optimizer = build_optimizer(model, self.cfg.train)
        warmup_steps = round(self.spec.warmup_epochs * steps_per_epoch)
        return optimizer, build_scheduler(optimizer, self.cfg.train, steps_per_epoch=steps_per_epoch,
                                          warmup_steps=warmup_steps)

    def epoch_batches(self, epoch: int, dist: DistInfo) -> list[torch.Tensor]:
        """This rank's index tensors of every global batch of ``epoch`` (a last batch too small to give
        every rank an example is dropped on all ranks alike)."""
        if self.teacher is not None:
            self.teacher.eval()  # frozen: eval mode, no grad, never updated (a careless caller may pass it in train mode)
        self.epoch = epoch
        self.order_generator = torch.Generator().manual_seed(derive_seed(self.spec.seed, "epoch", epoch))
        n = self.data.train_labels.shape[0]
        batches = rank_slices(iterate_batches(n, self.cfg.train.batch_size, shuffle=True,
                                              generator=self.order_generator, last=self.cfg.train.last_batch), dist)
        # rank 0 keeps drawing from the order generator (the single-process stream); other ranks their own
        self.aug_generator = self.order_generator if dist.rank == 0 else torch.Generator().manual_seed(
            derive_seed(self.spec.seed, "epoch", epoch, "rank", dist.rank))
        return batches

    def state_dict(self) -> dict:
        return {"aug_generator": self.aug_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.aug_generator.set_state(state["aug_generator"].to(torch.uint8))

    def loss(self, model, index: torch.Tensor, step: int) -> StepOutput:
        index = index.to(self.train_images.device, non_blocking=True)
        flip = None if self.base_flip is None else self.base_flip[index] ^ bool(self.epoch % 2)  # (b,)
        x = self.train_pipe(self.train_images[index], self.aug_generator, flip)  # (b, c, h, w)
        y = self.train_labels[index].to(self.device, non_blocking=True)  # (b,)
        teacher_logits = None
        if self.teacher is not None:
            # its own precision (ban.teacher_precision), whatever autocast the student's step runs under
            precision = autocast(self.device, self.teacher_precision) if self.teacher_precision != "fp32" else \
                torch.autocast(self.device.type, enabled=False)
            started = time.perf_counter()
            with torch.inference_mode(), precision:
                teacher_logits = self.teacher(x).float()  # (b, classes)
            teacher_logits = teacher_logits.clone()  # leave inference mode: a plain tensor without grad
            if self.teacher_timing is not None:
                self._time_teacher(time.perf_counter() - started)
        logits = model(x)  # (b, classes)
        with torch.autocast(self.device.type, enabled=False):  # the loss in fp32, outside bf16 autocast
            # a loss normalised by a statistic of the whole global batch (CWTM) sums it over the ranks
            extra = ({"across_ranks": all_reduce_tensor} if self.dist.enabled and
                     getattr(self.spec.loss_fn, "needs_global_batch", False) else {})
            parts = self.loss_fn(logits.float(), teacher_logits, y, **extra)
        b = y.shape[0]
        correct = (logits.detach().argmax(dim=1) == y).sum()
        return StepOutput(loss=parts["loss"], count=b,
                          sums={"label_loss": parts["label_loss"] * b, "kd_loss": parts["kd_loss"] * b,
                                "accuracy": 100.0 * correct})

    def _time_teacher(self, seconds: float) -> None:
        timing = self.teacher_timing
        if timing["calls"] == 0:
            timing["first_seconds"] = seconds
        timing["calls"] += 1
        timing["seconds"] += seconds

    evaluate_on_every_rank = True  # under torchrun the ranks share the validation predictions

    def _predict(self, model, images) -> torch.Tensor:
        """Logits on ``images``, every rank predicting its share of the batches under torchrun (all get all)."""
        train = self.cfg.train
        return predict_logits(model, images, self.eval_pipe, batch_size=train.eval_batch_size,
                              precision=train.precision, tta=train.tta, dist=self.dist)

    def evaluate(self, model, epoch: int) -> dict:
        if not self.data.val_labels.numel():
            return {}
        val = classification_metrics(self._predict(model, self.data.val_images).softmax(dim=1), self.data.val_labels)
        return {"val_accuracy": val["accuracy"], "val_nll": val["nll"]}

    def predict_on_every_rank(self, model) -> None:
        """The final model's validation and test predictions, shared by the ranks (finish() writes them)."""
        data = self.data
        self._val_probs = self._predict(model, data.val_images).softmax(1) if data.val_labels.numel() else None
        self._test_probs = self._predict(model, data.test_images).softmax(1)

    def finish(self, model, run_dir: Path) -> dict:
        """Validation and test probabilities (predicted by predict_on_every_rank), and this run's fields of
        results.json."""
        data, tta = self.data, self.cfg.train.tta
        val = {"accuracy": float("nan"), "nll": float("nan")}
        if data.val_labels.numel():
            val_probs = self._val_probs
            save_tensors({"probs": val_probs, "labels": data.val_labels}, run_dir / "val_probs.safetensors", {})
            val = classification_metrics(val_probs, data.val_labels)
        test_probs = self._test_probs
        save_tensors({"probs": test_probs, "labels": data.test_labels}, run_dir / "test_probs.safetensors", {})
        test = classification_metrics(test_probs, data.test_labels)
        return {
            "run": self.spec.name, "model": self.spec.model_name, "dataset": data.name, "seed": self.spec.seed,
            "params": parameter_count(model),
            "trainable_params": parameter_count(model, trainable=True),
            "epochs": self.cfg.train.epochs,
            "test_accuracy": test["accuracy"], "test_error": test["error"], "test_nll": test["nll"],
            "test_ece": test["ece"], "val_accuracy": val["accuracy"], "val_nll": val["nll"],
            "tta": tta, "label_smoothing": self.cfg.train.label_smoothing,
            "augmentation": data.augment_style if self.cfg.data.augment else "off",  # data.augment_style resolved
            **(self.spec.extra or {}),
        }


def fit(run_dir: str | Path, cfg: VisionConfig, data: PreparedData, spec: RunSpec,
        make_model: Callable[[], torch.nn.Module], *, resume: bool, speed: dict | None = None) -> dict:
    """Train ``make_model()`` under ``cfg.train`` with ``spec.loss_fn`` in ``run_dir``; return results.json.

    A finished run (results.json present) is never retrained; an interrupted one continues with ``resume``
    (engine/run.py: ``open_run``). ``auto`` speed settings are resolved here (``speed``: the choices the sequence
    made, with their reasons), train.compile per run from its number of steps; results.json["speed"] and a line
    at the start say what was chosen and why.
    """
    run_dir = Path(run_dir)
    cfg, own = resolve_vision_speed(cfg, run_dir)
    device, dist = start_process(cfg.train)
    steps = cfg.train.epochs * steps_per_epoch(data.train_labels.shape[0], cfg.train.batch_size, cfg.train.last_batch)
    # a resumed run keeps the compile choices it started with (the record has grown since); rank 0's for every rank
    cfg, compiling, keys = decide_compiling(cfg, tuple(data.train_images.shape), spec.teacher, device, steps,
                                            teacher_name=spec.teacher_name,
                                            recorded=recorded_keys(run_dir) if resume else None)
    state = open_run(run_dir, vision_settings(cfg), resume=resume, main=dist.is_main, config=config_to_dict(cfg))
    if state == "finished":
        return reuse_finished(run_dir, main=dist.is_main)
    if state == "resume" and data.augment_style == "rrc" and _recorded_before_augment_style(run_dir):
        # it began with the padded crop (the only augmentation then): it ends with it, not the random-resized crop
        data = dataclasses.replace(data, augment_style="crop")
        if dist.is_main:
            print(f"[{spec.name}] recorded before data.augment_style: continues with the padded crop it began with",
                  flush=True)
    choices = {**(speed or own), **compiling}
    spec = dataclasses.replace(spec, extra={**(spec.extra or {}), "speed": {k: c.as_dict() for k, c in choices.items()}})
    if dist.is_main:  # one line, with or without progress bars: what auto chose for this run and why
        print(f"[{spec.name}] {speed_line(choices)}", flush=True)
    task = ClassifierTask(cfg, data, spec, make_model, device)
    results = train(run_dir, task, engine_settings(cfg.train, device, seed=spec.seed), resume=state == "resume",
                    epoch_check=spec.epoch_check)
    if dist.is_main:
        remember(keys["compile"], steps, results if compiling["compile"].value else {**results, "compile_seconds": None})
        if task.teacher_timing is not None:
            remember_teacher(keys["teacher_compile"], task.teacher_timing)
    if task.compiles:
        # A graph compiled with frozen weights holds its module for the life of the process (dynamo's guards keep
        # it): without a reset every finished generation's teacher stayed in memory, and teachers sharing one
        # forward used up its recompile limit. The run is over; the on-disk kernel cache keeps the next compile short.
        task.teacher = None
        torch.compiler.reset()
    return results


def _recorded_before_augment_style(run_dir: Path) -> bool:
    """Whether ``run_dir`` recorded its settings before data.augment_style existed (every run then used the padded
    crop; the key's ADDED_KEYS value, auto, is that at CIFAR sizes only)."""
    try:
        tree = recorded_settings(run_dir)
    except UserError:
        return False
    return isinstance(tree, dict) and "augment_style" not in (tree.get("data") or {})


WHITENING_IMAGES = 5000
"""A data-fitted layer (models/airbench.py: the whitening stem) is fitted on the first this many training images of
the run's split (airbench94: 5,000)."""


def check_flips(cfg: VisionConfig, data: PreparedData) -> None:
    """Options that mirror images need a dataset whose images may be mirrored (data.hflip, resolved: off for
    digits): flip TTA would average in mirrored digits, and an alternating flip of an unflipped dataset is none."""
    if data.hflip:
        return
    if cfg.train.tta != "off":
        raise UserError(f"train.tta={cfg.train.tta} averages each image with its mirror image, but this dataset is "
                        "not flipped in training (data.hflip is off: digits, or set so): set train.tta=off, or "
                        "data.hflip=true where mirrored images keep their labels")
    if cfg.data.flip_mode == "alternate" and cfg.data.augment:
        raise UserError("data.flip_mode=alternate flips the images, but this dataset is not flipped in training "
                        "(data.hflip is off): set data.flip_mode=random, or data.hflip=true")


def with_label_smoothing(loss_fn: LossFn, epsilon: float) -> LossFn:
    """The run's loss with its label term smoothed by train.label_smoothing (the declared presets); a loss of its
    own (the label-smoothing control's, a user's function) is left as it is."""
    if epsilon and isinstance(loss_fn, ResolvedLoss):
        return dataclasses.replace(loss_fn, label_smoothing=epsilon)
    return loss_fn


def steps_per_epoch(n: int, batch_size: int, last_batch: str) -> int:
    """Optimiser steps of an epoch of ``n`` examples (splits.iterate_batches)."""
    if n <= batch_size:
        return 1
    return n // batch_size if last_batch == "drop" else -(-n // batch_size)
