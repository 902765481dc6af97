"""What the image benchmarks share: their command-line flags, the one-epoch config they run, and `auto`'s compile
decisions made for a generation of realistic length (one epoch is timed; a real generation is longer)."""

from __future__ import annotations

import argparse
import os

import torch

from bornagain_kd.pipelines.classifier import steps_per_epoch
from bornagain_kd.pipelines.vision_speed import decide_compiling
from bornagain_kd.vision.config import VisionConfig


def add_data_args(p: argparse.ArgumentParser, images: int) -> None:
    p.add_argument("--data", default=os.environ.get("BORNAGAIN_CIFAR10_JPEG", "../shared/data/cifar10-jpeg"))
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--planned-epochs", type=int, default=30,
                   help="the generation length `auto` decides train.compile and ban.teacher_compile for (default 30)")


def one_epoch_overrides(args: argparse.Namespace) -> list[str]:
    """One epoch on a seeded subset of the image folder, no validation split, lr held constant (gamma 1)."""
    return ["data.name=imagefolder", f"data.root={args.data}", f"data.train_subset={args.images}", "data.val_size=0",
            f"model.name={args.model}", "train.epochs=1", f"train.batch_size={args.batch_size}",
            "train.progress=false", "train.trackers=[]", "train.gamma=1.0"]


def decide_for_generation(cfg: VisionConfig, shape: tuple[int, ...], teacher: torch.nn.Module | None,
                          planned_epochs: int, device: torch.device) -> tuple[VisionConfig, dict]:
    """``cfg`` with train.compile and ban.teacher_compile decided as `bornagain ban` decides them for a generation
    of ``planned_epochs`` epochs of ``shape[0]`` images (explicit values stay), and those choices."""
    steps = planned_epochs * steps_per_epoch(shape[0], cfg.train.batch_size, cfg.train.last_batch)
    cfg, choices, _ = decide_compiling(cfg, shape, teacher, device, steps, teacher_name=cfg.model.name)
    return cfg, choices
