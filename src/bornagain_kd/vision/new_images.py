"""Images to predict (`bornagain predict RUN IMAGES`), read into uint8 arrays the way training read its data.

IMAGES is one of
    a folder of images                     photo1.jpg, photo2.png, ... (no labels)
    a folder of class folders              <class>/*.jpg: labelled by folder name (the model's class names)
    an image-folder dataset                train/ and test/ of class folders: the split --split names (test)
    one image file                         .png, .jpg, .jpeg
    a tensors file                         .safetensors / .npz with `images` (+ `labels`), or a dataset file's
                                           `<split>_images` (+ `<split>_labels`); layout as data.layout
    hf://ID_OR_FOLDER                      a Hugging Face dataset's --split (the hf extra): its image column
                                           and, where it has one, its label column

Image files are decoded as training decodes them (vision/imagefolder.py: every mode to 8-bit RGB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bornagain_kd.errors import UserError
from bornagain_kd.vision.imagefolder import IMAGE_SUFFIXES, decode_images
from bornagain_kd.vision.tensors import _labels, _to_nchw, read_arrays

HF_PREFIX = "hf://"


@dataclass(frozen=True)
class NewImages:
    """images (n, c, h, w) uint8; names: one per image (its file, or #row); labels (n,) int64 or None; classes:
    the source's class names where its labels are names (class folders, a dataset's ClassLabel), else None."""

    images: np.ndarray
    names: list[str]
    labels: np.ndarray | None
    classes: tuple[str, ...] | None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _from_files(paths: list[Path], base: Path, labels: np.ndarray | None = None,
                classes: tuple[str, ...] | None = None, size: int | None = None) -> NewImages:
    if not paths:
        raise UserError(f"{base} holds no images ({', '.join(IMAGE_SUFFIXES)}): give a folder of images, a folder "
                        "of class folders, an image file, a .safetensors / .npz file or hf://DATASET")
    hint = ("predict reads images of the size the run was trained on: resize them to one size first (a run trained "
            "with data.image_size resizes them itself)")
    images = decode_images([str(p) for p in paths], size=size, hint=hint)  # (n, 3, h, w): one size, or an error
    names = [str(p.relative_to(base)) if p != base else p.name for p in paths]
    return NewImages(images, names, labels, classes)


def _from_folder(folder: Path, split: str, size: int | None = None) -> NewImages:
    subfolders = _class_folders(folder)
    if {"train", "test"} <= {p.name for p in subfolders}:  # an image-folder dataset: one of its splits
        if not (folder / split).is_dir():
            raise UserError(f"{folder} has no {split}/ folder: --split takes train or test here")
        return _from_folder(folder / split, split, size)
    loose = _images_in(folder)
    if loose and subfolders:
        raise UserError(f"{folder} holds images ({loose[0].name}, ...) beside folders ({subfolders[0].name}, ...): "
                        "give a folder of images alone, or of class folders alone (the folder names are the labels)")
    if loose or not subfolders:
        return _from_files(loose, folder, size=size)
    classes = tuple(p.name for p in subfolders)
    paths, labels = [], []
    for label, sub in enumerate(subfolders):
        found = _images_in(sub)
        paths += found
        labels += [label] * len(found)
    return _from_files(paths, folder, np.asarray(labels, dtype=np.int64), classes, size=size)


def _from_tensors(path: Path, split: str, layout: str) -> NewImages:
    arrays = read_arrays(path)
    for images_key, labels_key in (("images", "labels"), (f"{split}_images", f"{split}_labels")):
        if images_key in arrays:
            images = _to_nchw(arrays[images_key], images_key, layout, path)
            labels = (_labels(arrays[labels_key], labels_key, images.shape[0], path) if labels_key in arrays
                      else None)
            classes = None
            if "classes" in arrays and labels is not None:
                classes = tuple(str(c) for c in arrays["classes"].tolist())
            return NewImages(images, [f"#{i}" for i in range(images.shape[0])], labels, classes)
    raise UserError(f"{path} holds no 'images' nor '{split}_images' array (it holds: {', '.join(sorted(arrays))}): "
                    "save the images as 'images' (n, c, h, w) or (n, h, w, c) uint8, labels optional as 'labels'")


def _from_hf(root: str, split: str, image_column: str | None) -> NewImages:
    from bornagain_kd.vision.hf_datasets import (  # noqa: PLC0415  (the optional `datasets`)
        IMAGE_COLUMNS, LABEL_COLUMNS, _pick, _pixels, import_datasets, open_splits, pick_split,
    )

    datasets = import_datasets()
    ds = pick_split(open_splits(root), split, "--split", root)
    features = ds.features
    image = _pick(features, image_column, datasets.Image, IMAGE_COLUMNS, "--image-column", "images", root)
    label = next((c for c in features if isinstance(features[c], datasets.ClassLabel)),
                 next((c for c in LABEL_COLUMNS if c in features), None))
    pixels = [_pixels(im, row, f"{root} [{split}]") for row, im in enumerate(ds[image])]
    sizes = {p.shape for p in pixels}
    if len(sizes) > 1:
        raise UserError(f"{root} [{split}]: images of several sizes and modes {sorted(sizes)[:3]}: the model takes "
                        "one size; resize them first (ds.map with PIL's resize)")
    images = np.stack(pixels)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = classes = None
    if label is not None:
        values = np.asarray(ds[label])
        if values.dtype.kind in "iu" and (not values.size or values.min() >= 0):  # unlabelled splits hold -1
            labels = values.astype(np.int64)
            names = getattr(features[label], "names", None)
            classes = tuple(names) if names else None
    return NewImages(np.ascontiguousarray(images), [f"#{i}" for i in range(len(pixels))], labels, classes)


def read_new_images(source: str | os.PathLike, *, split: str = "test", layout: str = "auto",
                    image_column: str | None = None, size: int | None = None) -> NewImages:
    """The images ``source`` names (see the module docstring); one UserError naming the problem otherwise.
    ``size``: the run's data.image_size, to which image files are resized as its training images were."""
    text = str(source)
    if text.startswith(HF_PREFIX):
        return _from_hf(text[len(HF_PREFIX):], split, image_column)
    path = Path(text).expanduser()
    if path.is_dir():
        if any(path.glob("*.npy")) and not _images_in(path) and not _class_folders(path):
            return _from_tensors(path, split, layout)  # a folder of .npy arrays, as data.name=tensors reads
        return _from_folder(path, split, size)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a folder of images, an image file, a .safetensors / .npz file "
                        "or hf://DATASET")
    if path.suffix.lower() in (".safetensors", ".npz"):
        return _from_tensors(path, split, layout)
    if path.suffix.lower() == ".npy":  # one array of images
        try:
            images = np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path} cannot be read as .npy ({e}): write it again with numpy.save") from None
        return NewImages(_to_nchw(images, "images", layout, path), [f"#{i}" for i in range(images.shape[0])], None,
                         None)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _from_files([path], path, size=size)
    raise UserError(f"{path} is a {path.suffix or 'file without suffix'}: predict reads images "
                    f"({', '.join(IMAGE_SUFFIXES)}), folders of them, .safetensors / .npz / .npy files, a folder of "
                    ".npy files or hf://DATASET")
