"""A dataset from one file of arrays (``data.name=tensors``): no folder layout, any image size and channel count.

The file is ``.safetensors`` (memory-mapped), ``.npz`` (numpy, read whole, without pickle), or data.root is a folder
of ``.npy`` files (memory-mapped; class names in ``classes.txt``, one per line), holding

    train_images, test_images   uint8, (n, c, h, w) or (n, h, w, c), or (n, h, w) for one channel
    train_labels, test_labels   integers, (n,), classes 0..K-1 (K = the largest label + 1)
    classes                     optional (.npz only): K class names as a string array

``data.layout`` says where the channels are (auto: the axis of size 1, 3 or 4 when only one of
axis 1 and axis 3 has such a size). Everything is checked before a run starts: a missing key, a wrong
dtype or shape, labels outside 0..K-1 or a class with no training image is one UserError naming the
key and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bornagain_kd.errors import UserError, describe

KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_CHANNEL_SIZES = (1, 3, 4)

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]


_SAFETENSORS_DTYPES = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32,
                       "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16, "F32": np.float32,
                       "F64": np.float64, "BOOL": np.bool_}


def map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .safetensors file, memory-mapped (copy-on-write: nothing is written back), not read: the
    format is an 8-byte header length, a JSON header of (dtype, shape, [start, end)) per array, then the bytes."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 2 <= header_len <= 100_000_000:
            raise ValueError(f"header length {header_len}")
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    size = path.stat().st_size
    arrays = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        shape = tuple(int(d) for d in info["shape"])
        start, end = (int(v) for v in info["data_offsets"])
        if end - start != int(np.prod(shape)) * dtype.itemsize or base + end > size:
            raise ValueError(f"array {key!r}: its offsets do not match its shape or the file's size")
        arrays[key] = (np.memmap(path, dtype=dtype, mode="c", offset=base + start, shape=shape) if end > start
                       else np.zeros(shape, dtype))
    return arrays


def read_npy_folder(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a folder of .npy files (NAME.npy -> NAME), memory-mapped; class names from classes.txt (one per
    line) where present."""
    arrays = {p.stem: np.load(p, mmap_mode="c", allow_pickle=False) for p in sorted(path.glob("*.npy"))}
    names = path / "classes.txt"
    if names.is_file():
        arrays["classes"] = np.array(names.read_text().splitlines())
    return arrays


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array in a .safetensors file or a folder of .npy files (both memory-mapped: the images are read as
    batches need them), or an .npz (read whole: numpy cannot map it). No pickle."""
    if path.is_dir():
        try:
            arrays = read_npy_folder(path)
        except (OSError, ValueError) as e:
            raise UserError(f"data.root={path}: a .npy file in it cannot be read ({describe(e, 150)}): write it "
                            "again with numpy.save") from None
        if not arrays:
            raise UserError(f"data.root={path} is a folder without .npy files; data.name=tensors needs "
                            f"{', '.join(k + '.npy' for k in KEYS)} there, or a .safetensors or .npz file")
        return arrays
    if not path.is_file():
        raise UserError(f"data.root={path}: no such file; data.name=tensors needs a .safetensors or .npz file "
                        "(or a folder of .npy files)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return map_safetensors(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, KeyError, zipfile.BadZipFile: unreadable
        raise UserError(f"data.root={path} cannot be read as {suffix} ({describe(e, 150)}): the file is "
                        "corrupt or not what its name says; write it again (numpy.savez or "
                        "safetensors.numpy.save_file)") from None
    raise UserError(f"data.root={path} is a {suffix or 'file without suffix'}: data.name=tensors reads .safetensors "
                    "or .npz files, or a folder of .npy files")


def _to_nchw(images: np.ndarray, key: str, layout: str, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise UserError(f"{path}: '{key}' is {images.dtype}, images must be uint8 in 0..255 "
                        "(convert floats in [0, 1] with np.rint(x * 255).astype(np.uint8))")
    if images.ndim == 3:  # (n, h, w): one channel
        return images[:, None]
    if images.ndim != 4:
        raise UserError(f"{path}: '{key}' has shape {images.shape}; images must be (n, c, h, w), (n, h, w, c) "
                        "or (n, h, w)")
    if layout == "auto":
        first, last = images.shape[1] in _CHANNEL_SIZES, images.shape[3] in _CHANNEL_SIZES
        if first == last:
            raise UserError(f"{path}: cannot tell where the channels of '{key}' {images.shape} are; "
                            "set data.layout=nchw or data.layout=nhwc")
        layout = "nchw" if first else "nhwc"
    # a view, not a copy: a mapped (n, h, w, c) file stays mapped, and a batch's rows are gathered as they are drawn
    return images if layout == "nchw" else images.transpose(0, 3, 1, 2)


def _labels(labels: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: '{key}' is {labels.dtype}; labels must be integers 0..K-1")
    if labels.shape != (n,):
        raise UserError(f"{path}: '{key}' has shape {labels.shape} but there are {n} images; "
                        "give one label per image, shape (n,)")
    if n and labels.min() < 0:
        raise UserError(f"{path}: '{key}' holds the negative label {int(labels.min())}; labels must be 0..K-1")
    return labels.astype(np.int64)


def load_tensor_file(root: str | Path, layout: str = "auto") -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class names) from a tensors file, checked (see the module docstring)."""
    path = Path(root).expanduser()
    arrays = read_arrays(path)
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} (it holds: {', '.join(sorted(arrays)) or 'nothing'}); "
                        f"data.name=tensors needs the arrays {', '.join(KEYS)}")
    splits = {}
    for split in ("train", "test"):
        images = _to_nchw(arrays[f"{split}_images"], f"{split}_images", layout, path)
        if images.shape[0] == 0:
            raise UserError(f"{path}: '{split}_images' holds no images")
        splits[split] = (images, _labels(arrays[f"{split}_labels"], f"{split}_labels", images.shape[0], path))
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{path}: train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]} "
                        "(c, h, w); both splits need the same image size and channels")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    absent = sorted(set(range(num_classes)) - set(np.unique(train_y).tolist()))
    if absent:
        raise UserError(f"{path}: labels run to {num_classes - 1} but class(es) {absent[:10]} have no training "
                        "image; number the classes 0..K-1 with every class in train_labels")
    classes = tuple(str(c) for c in range(num_classes))
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.shape[0] != num_classes:
            raise UserError(f"{path}: 'classes' has shape {names.shape} but the labels name {num_classes} classes; "
                            "give one name per class, or leave 'classes' out")
        classes = tuple(str(c) for c in names.tolist())
    return splits["train"], splits["test"], classes
