"""One complete, resumable classification run in a run directory.

    run_dir/
      config.yaml              resolved config of this run
      checkpoint.safetensors   whole state after the last finished epoch (resume point)
      metrics.jsonl, tb/       one record per epoch (train loss parts, val accuracy, lr, images/s)
      model.safetensors        final weights (after the full schedule: last epoch, not best)
      test_probs.safetensors   softmax outputs on the test set (+ labels), for ensembles
      val_probs.safetensors    the same on the validation split
      results.json             written last: its presence marks the run finished

The test set is evaluated once, after the last epoch, and selects nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from bornagain.config import save_config
from bornagain.engine.checkpoint import save_tensors, load_checkpoint, save_checkpoint, save_weights
from bornagain.engine.device import resolve_device
from bornagain.engine.distributed import barrier, init_distributed
from bornagain.engine.io import read_json, write_json
from bornagain.engine.logging import RunLogger, read_metrics
from bornagain.engine.loop import BatchPipeline, LossFn, classification_metrics, predict_logits, train_one_epoch
from bornagain.engine.rng import derive_seed, seed_everything
from bornagain.errors import UserError
from bornagain.schedules import lr_factor
from bornagain.vision.config import TrainConfig, VisionConfig
from bornagain.vision.prepare import PreparedData

CHECKPOINT = "checkpoint.safetensors"
RESULTS = "results.json"


@dataclass(frozen=True)
class RunSpec:
    """What distinguishes one run of a sequence (a BAN generation, a baseline) from another."""

    name: str  # "gen0", "gen1", "baseline", "train"
    model_name: str
    seed: int
    loss_fn: LossFn
    teacher: torch.nn.Module | None = None
    extra: dict | None = None  # copied into results.json (generation number, loss weights, ...)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.SGD:
    # Frozen (shared) layers are left out: no weight decay creeps into them either.
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov and train.momentum > 0,
                           weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch LambdaLR: stepped once at the end of every epoch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda epoch: lr_factor(epoch, epochs=train.epochs, schedule=train.schedule, milestones=train.milestones,
                                gamma=train.gamma, warmup_epochs=train.warmup_epochs),
    )


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / RESULTS).is_file()


def load_probs(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (n, classes), labels (n,)) saved by a finished run."""
    try:
        d = load_file(str(path))
    except Exception as e:
        raise UserError(f"'{path}' is corrupt or missing ({e.__class__.__name__}); rerun that generation") from None
    return d["probs"], d["labels"]


def fit(run_dir: str | Path, cfg: VisionConfig, data: PreparedData, spec: RunSpec,
        make_model: Callable[[], torch.nn.Module], *, resume: bool) -> dict:
    """Train ``make_model()`` under ``cfg.train`` with ``spec.loss_fn``; write the run directory; return results.

    A finished run (results.json present) is not retrained when ``resume`` is set.
    """
    run_dir = Path(run_dir)
    if resume and is_finished(run_dir):
        return read_json(run_dir / RESULTS)
    train = cfg.train
    device = resolve_device(train.device)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)

    dist_info = init_distributed(device.type)
    main = dist_info.is_main

    seed_everything(spec.seed)
    model = make_model().to(device)  # fresh initialisation from this run's seed (identical on every rank)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    logger = RunLogger(run_dir, tensorboard=train.tensorboard, enabled=main)

    start_epoch = 0
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.exists():
        extra = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        start_epoch = int(extra["epoch"])
        logger.truncate_after(start_epoch)
    elif main:  # a fresh start, also when a resumed run died before its first checkpoint
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    train_model = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if dist_info.rank > 0:  # other dropout masks than rank 0's; rank 0 keeps the single-process stream
            seed_everything(derive_seed(spec.seed, "rank", dist_info.rank))
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_pipe = BatchPipeline(data.mean, data.std, device, augment=cfg.data.augment, pad=data.crop_pad,
                               hflip=data.hflip, channels_last=train.channels_last)
    eval_pipe = BatchPipeline(data.mean, data.std, device, channels_last=train.channels_last)
    steps_per_epoch = -(-data.train_labels.shape[0] // train.batch_size)
    show = train.progress

    for epoch in range(start_epoch, train.epochs):
        lr = optimizer.param_groups[0]["lr"]
        generator = torch.Generator().manual_seed(derive_seed(spec.seed, "epoch", epoch))
        t0 = time.perf_counter()
        stats = train_one_epoch(
            train_model, spec.loss_fn, optimizer, data.train_images, data.train_labels, train_pipe,
            batch_size=train.batch_size, generator=generator, precision=train.precision, teacher=spec.teacher,
            first_step=epoch * steps_per_epoch, desc=f"{spec.name} epoch {epoch + 1}/{train.epochs}", run_name=spec.name,
            show_progress=show, dist_info=dist_info,
        )
        seconds = time.perf_counter() - t0
        scheduler.step()
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": stats["loss"], "train_label_loss": stats["label_loss"],
                  "train_kd_loss": stats["kd_loss"], "train_accuracy": stats["accuracy"],
                  "images_per_second": data.train_labels.shape[0] / seconds, "epoch_seconds": seconds}
        if data.val_labels.numel() and main:
            val_logits = predict_logits(model, data.val_images, eval_pipe, batch_size=train.eval_batch_size,
                                        precision=train.precision)
            val = classification_metrics(val_logits.softmax(dim=1), data.val_labels)
            record.update(val_accuracy=val["accuracy"], val_nll=val["nll"])
        logger.log(record, step=epoch + 1)
        logger.flush()
        if main:
            save_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, extra={"epoch": epoch + 1})
        barrier()
        if show and main:
            val_txt = f" val_acc {record['val_accuracy']:.2f}%" if "val_accuracy" in record else ""
            print(f"[{spec.name}] epoch {epoch + 1}/{train.epochs} loss {stats['loss']:.4f} "
                  f"train_acc {stats['accuracy']:.2f}%{val_txt} ({record['images_per_second']:.0f} img/s)", flush=True)
    logger.close()
    if main:
        _finish(run_dir, cfg, data, spec, model, eval_pipe)
    barrier()  # the other ranks read what rank 0 wrote
    return read_json(run_dir / RESULTS)


def _finish(run_dir: Path, cfg: VisionConfig, data: PreparedData, spec: RunSpec, model: torch.nn.Module,
            eval_pipe: BatchPipeline) -> dict:
    """Final weights, validation and test probabilities, results.json (last)."""
    precision, bs = cfg.train.precision, cfg.train.eval_batch_size
    save_weights(model, run_dir / "model.safetensors", metadata={"model": spec.model_name})
    val = {"accuracy": float("nan"), "nll": float("nan")}
    if data.val_labels.numel():
        val_probs = predict_logits(model, data.val_images, eval_pipe, batch_size=bs, precision=precision).softmax(1)
        save_tensors({"probs": val_probs, "labels": data.val_labels}, run_dir / "val_probs.safetensors", {})
        val = classification_metrics(val_probs, data.val_labels)
    test_probs = predict_logits(model, data.test_images, eval_pipe, batch_size=bs, precision=precision).softmax(1)
    save_tensors({"probs": test_probs, "labels": data.test_labels}, run_dir / "test_probs.safetensors", {})
    test = classification_metrics(test_probs, data.test_labels)
    results = {
        "run": spec.name, "model": spec.model_name, "dataset": data.name, "seed": spec.seed,
        "params": count_parameters(model),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": cfg.train.epochs,
        "test_accuracy": test["accuracy"], "test_error": test["error"], "test_nll": test["nll"], "test_ece": test["ece"],
        "val_accuracy": val["accuracy"], "val_nll": val["nll"],
        "reported_epoch": "last",  # never the best epoch: nothing is selected on the test set
        # training time summed over the epochs' records, so it survives a resume
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in read_metrics(run_dir / "metrics.jsonl")),
        **(spec.extra or {}),
    }
    write_json(run_dir / RESULTS, results)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the final weights replace the resume point
    return results
