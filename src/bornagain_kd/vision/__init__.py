"""Vision data for Born-Again Networks: in-memory datasets, batched augmentation, splits."""

from bornagain_kd.vision.augment import default_crop_pad, normalize, random_crop_flip
from bornagain_kd.vision.cifar import load_cifar
from bornagain_kd.vision.datasets import (
    DATASET_NAMES,
    ImageDataset,
    VisionData,
    channel_stats,
    load_vision_data,
)
from bornagain_kd.vision.imagefolder import load_image_folder
from bornagain_kd.vision.splits import iterate_batches, train_val_split

__all__ = [
    "DATASET_NAMES",
    "ImageDataset",
    "VisionData",
    "channel_stats",
    "default_crop_pad",
    "iterate_batches",
    "load_cifar",
    "load_image_folder",
    "load_vision_data",
    "normalize",
    "random_crop_flip",
    "train_val_split",
]
