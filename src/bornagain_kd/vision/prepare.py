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


class ImageView:
    """Rows ``index`` of an (n, c, h, w) uint8 tensor, without copying them: a split or subset of a dataset that may
    be memory-mapped from disk. Indexing gathers only the rows asked for (a batch); ``to(device)`` copies the whole
    view (a GPU that holds the training set)."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor | None = None):
        self.base, self.index = base, index  # index: (m,) int64 rows of base, or None for all of them

    @property
    def shape(self) -> torch.Size:
        n = self.base.shape[0] if self.index is None else self.index.shape[0]
        return torch.Size((n, *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape.numel()

    def rows(self, which) -> torch.Tensor:
        """Row numbers in ``base`` of this view's rows ``which`` (an int, a slice or a tensor of positions)."""
        if isinstance(which, torch.Tensor):
            which = which.to(self.index.device if self.index is not None else "cpu")
        return torch.arange(self.base.shape[0])[which] if self.index is None else self.index[which]

    def __getitem__(self, which) -> torch.Tensor:
        if self.index is None:
            return self.base[which]
        return self.base[self.rows(which).to(self.base.device)]  # (b, c, h, w): only these rows are read

    def select(self, index: torch.Tensor) -> "ImageView":
        """The view of this view's rows ``index`` (a subset of a split: still no copy)."""
        return ImageView(self.base, self.rows(index))

    def numpy(self):
        """The view's rows as one numpy array (read whole: a copy where the view is a subset)."""
        return self.base.numpy() if self.index is None else self.base[self.index].numpy()

    def to(self, device: torch.device, **kwargs) -> torch.Tensor:
        """The whole view as one tensor on ``device`` (read whole)."""
        whole = self.base if self.index is None else self.base[self.index.to(self.base.device)]
        return whole.to(device, **kwargs)


def as_view(images: torch.Tensor | ImageView) -> ImageView:
    return images if isinstance(images, ImageView) else ImageView(images)


@dataclass(frozen=True)
class PreparedData:
    """Everything a classification run reads. Images (n, c, h, w) uint8 (an ``ImageView``: rows of a dataset that may
    be memory-mapped, read a batch at a time), labels (n,) int64."""

    name: str
    classes: tuple[str, ...]
    train_images: ImageView
    train_labels: torch.Tensor
    val_images: ImageView
    val_labels: torch.Tensor
    test_images: ImageView
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_pad: int
    augment_style: str = "crop"  # data.augment_style resolved: crop | rrc

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
                          splits=(data.train_split, data.test_split), columns=(data.image_column, data.label_column),
                          image_size=data.image_size)
    images, labels = ImageView(vd.train.images), vd.train.labels  # index arrays from here on, never copies
    if data.train_subset is not None and data.train_subset < labels.shape[0]:
        classes = int(labels.unique().numel())
        if data.train_subset < classes:  # a stratified subset keeps one image of every class at least
            raise UserError(f"data.train_subset={data.train_subset} cannot hold one image of each of the {classes} "
                            f"classes: set it to at least {classes} (and leave room for data.val_size)")
        keep, _ = train_val_split(labels, labels.shape[0] - data.train_subset, seed=seed + 1)
        images, labels = images.select(keep), labels[keep]
    val_size = data.val_size
    if isinstance(val_size, int) and val_size >= labels.shape[0]:
        raise UserError(f"data.val_size={val_size} is not smaller than the {labels.shape[0]} training images")
    train_idx, val_idx = train_val_split(labels, val_size, seed=seed)
    if len(train_idx) == 0:
        raise UserError("no training images are left after the validation split: lower data.val_size")
    train_images = images.select(train_idx)
    # normalisation statistics from the training part only: validation and test images shape nothing
    mean, std = channel_stats(train_images)
    side = int(images.shape[2])
    style = data.augment_style if data.augment_style != "auto" else ("rrc" if min(images.shape[2:]) > 64 else "crop")
    return PreparedData(
        name=dataset_label(data, vd.name),
        classes=tuple(vd.classes),
        train_images=train_images, train_labels=labels[train_idx],
        val_images=images.select(val_idx), val_labels=labels[val_idx],
        test_images=ImageView(vd.test.images), test_labels=vd.test.labels,
        mean=tuple(mean), std=tuple(std), hflip=vd.hflip if data.hflip is None else data.hflip,
        crop_pad=default_crop_pad(side) if data.crop_padding is None else data.crop_padding,
        augment_style=style,
    )
