"""Vision datasets held whole in memory as uint8 tensors.

The training engine indexes these tensors to draw batches (see `splits.py`) and
augments/normalises whole batches (see `augment.py`); nothing here runs per image
during training. Per-channel mean and std come from the TRAIN split only, so the
test set never shapes anything.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bornagain_kd.errors import UserError
from bornagain_kd.vision.cifar import load_cifar
from bornagain_kd.vision.imagefolder import load_image_folder
from bornagain_kd.vision.tensors import load_tensor_file

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "tensors", "hf")


@dataclass(frozen=True)
class ImageDataset:
    """One split: images (n, c, h, w) uint8 in 0..255 and labels (n,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (n, c, h, w) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be (n,) int64 with n={self.images.shape[0]}, "
                f"got {tuple(self.labels.shape)} {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class VisionData:
    """A dataset's train and test splits and what augmenting them needs.

    mean, std: per channel, in [0, 1] pixel units, computed on `train` only.
    hflip: whether a horizontal flip keeps the label (False for digits).
    """

    train: ImageDataset
    test: ImageDataset
    classes: tuple[str, ...]
    hflip: bool
    name: str

    @functools.cached_property
    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_stats(self.train.images)

    @property
    def mean(self) -> tuple[float, ...]:
        return self._stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._stats[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of every image."""
        return tuple(self.train.images.shape[1:])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units.

    mean_c = E[x_c / 255],  std_c = sqrt(E[(x_c / 255)^2] - mean_c^2), over all
    images and pixels. Computed exactly from a 256-bin histogram per channel
    (torch.bincount), which is fast and never makes a float copy of the data.
    """
    n, c = images.shape[:2]
    if n == 0:
        raise UserError("cannot compute normalisation statistics of an empty training split: add training images")
    values = torch.arange(256, dtype=torch.float64) / 255.0  # (256,)
    counts = torch.zeros(c, 256, dtype=torch.float64)  # (c, 256)
    per_image = int(np.prod(images.shape[1:]))
    step = max(1, (64 << 20) // per_image)  # ~64 MB of images at a time: a mapped split is never copied whole
    for start in range(0, n, step):
        chunk = images[start:start + step]  # (k, c, h, w) uint8 (a view's rows gathered, a mapped file's read)
        for ch in range(c):
            counts[ch] += torch.bincount(chunk[:, ch].reshape(-1), minlength=256).to(torch.float64)
    mean, std = [], []
    for ch in range(c):
        p = counts[ch] / counts[ch].sum()
        m = float((p * values).sum())
        var = float((p * values.square()).sum()) - m * m
        mean.append(m)
        std.append(max(var, 0.0) ** 0.5)
    return tuple(mean), tuple(std)


def _digits_splits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[str, ...]]:
    """scikit-learn's 1,797 bundled 8x8 digits, split 1,437/360 (stratified, random_state 0).

    Pixel values 0..16 are rescaled to uint8: round(v * 255 / 16).
    """
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    classes = tuple(str(c) for c in range(10))
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx]), classes


def _to_dataset(split: tuple[np.ndarray, np.ndarray]) -> ImageDataset:
    """Tensors sharing the arrays' memory: a memory-mapped split stays mapped (a strided view, such as (n, h, w, c)
    transposed to (n, c, h, w), stays a view)."""
    images, labels = split
    return ImageDataset(
        images=torch.from_numpy(images if images.dtype == np.uint8 else images.astype(np.uint8)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    )


def load_vision_data(name: str, root: str | os.PathLike | None, *, download: bool = True,
                     layout: str = "auto", splits: tuple[str, str] = ("train", "test"),
                     columns: tuple[str | None, str | None] = (None, None),
                     image_size: int | None = None) -> VisionData:
    """Load a vision dataset: small ones into memory, decoded image folders and Hugging Face datasets (and tensors
    files where their format allows) memory-mapped from disk, so processes share one copy.

    name: "digits" (scikit-learn's bundled 8x8 digits; `root` is ignored),
    "cifar10" / "cifar100" (python-pickle folders under `root`, downloaded and
    MD5-checked when absent and `download` is set), "imagefolder"
    (`root`/{train,test}/<class>/*.png|jpg, decoded once and cached), or "tensors"
    (`root` is a .safetensors / .npz file of arrays, `layout` where its channels are; vision/tensors.py), or "hf"
    (a Hugging Face dataset: a hub id or a local folder, its (train, test) `splits` and (image, label) `columns`,
    None to detect; vision/hf_datasets.py). ``image_size`` (data.image_size): imagefolder and hf images are resized
    to it once, as the cache is written; the other sources must already have that size.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    if name == "digits":
        train, test, classes = _digits_splits()
        hflip = False  # a mirrored digit is another symbol (or none)
    else:
        if root is None:
            what = {"imagefolder": "the folder holding train/ and test/",
                    "tensors": "the .safetensors or .npz file",
                    "hf": "a hub id or a datasets folder"}.get(name, "where to find or download it")
            raise UserError(f"dataset {name!r} needs a data root: set data.root=DIR, {what}")
        if name in ("cifar10", "cifar100"):
            train, test, classes = load_cifar(name, root, download=download)
        elif name == "tensors":
            train, test, classes = load_tensor_file(root, layout)
        elif name == "hf":
            from bornagain_kd.vision.hf_datasets import load_hf_dataset  # noqa: PLC0415  (the optional `datasets`)

            train, test, classes = load_hf_dataset(str(root), splits=splits, columns=columns, image_size=image_size)
        else:
            train, test, classes = load_image_folder(root, image_size=image_size)
        hflip = True  # natural images: a mirrored scene keeps its label (data.hflip=false says otherwise)
    train_ds, test_ds = _to_dataset(train), _to_dataset(test)
    if image_size is not None and tuple(train_ds.images.shape[2:]) != (image_size, image_size):
        h, w = train_ds.images.shape[2:]
        raise UserError(f"data.image_size={image_size}, but {name}'s images are {w}x{h}: the size is applied where "
                        "images are decoded (data.name=imagefolder or hf); for this source drop data.image_size, or "
                        "write the images at that size")
    if train_ds.images.shape[1:] != test_ds.images.shape[1:]:
        raise UserError(
            f"{name}: train images are {tuple(train_ds.images.shape[1:])} but test images are "
            f"{tuple(test_ds.images.shape[1:])} (c, h, w): make both splits the same size"
        )
    return VisionData(train=train_ds, test=test_ds, classes=classes, hflip=hflip, name=name)
