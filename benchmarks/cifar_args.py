"""What the image benchmarks share: their command-line flags and the one-epoch config they run."""

from __future__ import annotations

import argparse
import os


def add_data_args(p: argparse.ArgumentParser, images: int) -> None:
    p.add_argument("--data", default=os.environ.get("BORNAGAIN_CIFAR10_JPEG", "../shared/data/cifar10-jpeg"))
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)


def one_epoch_overrides(args: argparse.Namespace) -> list[str]:
    """One epoch on a seeded subset of the image folder, no validation split, lr held constant (gamma 1)."""
    return ["data.name=imagefolder", f"data.root={args.data}", f"data.train_subset={args.images}", "data.val_size=0",
            f"model.name={args.model}", "train.epochs=1", f"train.batch_size={args.batch_size}",
            "train.progress=false", "train.trackers=[]", "train.gamma=1.0"]
