"""From a data config to the tensors a run trains on: train / validation / test, in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bornagain_kd.errors import UserError
from bornagain_kd.vision.augment import default_crop_pad
from bornagain_kd.vision.config import DataConfig
from bornagain_kd.vision.datasets import channel_stats, load_vision_data
from bornagain_kd.vision.splits import train_val_split


@dataclass(frozen=True)
class PreparedData:
    """Everything a classification run reads. Images (n, c, h, w) uint8, labels (n,) int64."""

    name: str
    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_pad: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])


def dataset_label(data: DataConfig, name: str) -> str:
    """The dataset's name in results and tables: the folder or file for a local source ("cifar-jpegs
    (imagefolder)"), the hub id for a Hugging Face dataset from the hub ("uoft-cs/cifar100 (hf)")."""
    if data.name not in ("imagefolder", "tensors", "hf"):
        return name
    local = Path(data.root).expanduser()
    return f"{local.resolve().name if local.exists() else data.root} ({data.name})"


def prepare_data(data: DataConfig, seed: int) -> PreparedData:
    """Load the dataset, hold out a stratified validation split (seeded), optionally subsample training.

    The split depends only on ``seed`` and the data, so every generation of a
    BAN sequence sees the same train/validation partition.
    """
    vd = load_vision_data(data.name, data.root, download=data.download, layout=data.layout,
                          splits=(data.train_split, data.test_split), columns=(data.image_column, data.label_column))
    images, labels = vd.train.images, vd.train.labels
    if data.train_subset is not None and data.train_subset < labels.shape[0]:
        classes = int(labels.unique().numel())
        if data.train_subset < classes:  # a stratified subset keeps one image of every class at least
            raise UserError(f"data.train_subset={data.train_subset} cannot hold one image of each of the {classes} "
                            f"classes: set it to at least {classes} (and leave room for data.val_size)")
        keep, _ = train_val_split(labels, labels.shape[0] - data.train_subset, seed=seed + 1)
        images, labels = images[keep], labels[keep]
    val_size = data.val_size
    if isinstance(val_size, int) and val_size >= labels.shape[0]:
        raise UserError(f"data.val_size={val_size} is not smaller than the {labels.shape[0]} training images")
    train_idx, val_idx = train_val_split(labels, val_size, seed=seed)
    if len(train_idx) == 0:
        raise UserError("no training images are left after the validation split: lower data.val_size")
    # normalisation statistics from the training part only: validation and test images shape nothing
    mean, std = channel_stats(images[train_idx])
    return PreparedData(
        name=dataset_label(data, vd.name),
        classes=tuple(vd.classes),
        train_images=images[train_idx], train_labels=labels[train_idx],
        val_images=images[val_idx], val_labels=labels[val_idx],
        test_images=vd.test.images, test_labels=vd.test.labels,
        mean=tuple(mean), std=tuple(std), hflip=vd.hflip if data.hflip is None else data.hflip,
        crop_pad=default_crop_pad(int(images.shape[2])) if data.crop_padding is None else data.crop_padding,
    )
