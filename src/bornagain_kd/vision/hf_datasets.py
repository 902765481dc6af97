"""Images from Hugging Face `datasets` (``data.name=hf``), decoded once into the uint8 arrays of every source.

``data.root`` is one of
    a folder written by ``Dataset(Dict).save_to_disk``          read with ``datasets.load_from_disk``
    any other local folder: parquet / arrow files, an image folder  ``datasets.load_dataset(folder)``; splits
                                                                   from the file names (train-*.parquet, test/...)
    a hub id such as ``uoft-cs/cifar100`` (online, or in the cache)  ``datasets.load_dataset(id)``

The splits are ``data.train_split`` / ``data.test_split``; the image column is ``data.image_column`` (null: the one
``Image`` feature, else "img" or "image"), the label column ``data.label_column`` (null: the one ``ClassLabel``
feature, else "label" or "fine_label"). The classes are the ClassLabel's names, or 0..max label.

Decoding is the slow part (Pillow, one image at a time), so the decoded arrays go, a batch of rows at a time, to
the memory-mapped cache of the image folders (vision/array_cache.py): ROOT/.bornagain-cache/ for a local folder, the user cache ($BORNAGAIN_CACHE_DIR, else ~/.cache/bornagain/) for a hub id, keyed by the
root, splits and columns asked for. Its fingerprint: the local folder's files (path, size, mtime), checked before
`datasets` opens anything; for a hub id, the arrow files `datasets` keeps in its cache. The next load maps the
arrays unless those files changed. `datasets` is imported only here, and only when used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from bornagain_kd.engine.run_log import bars_shown
from bornagain_kd.errors import UserError, describe
from bornagain_kd.vision.array_cache import ArrayWriter, load_or_build, read_arrays
from bornagain_kd.vision.imagefolder import (convert_npz_cache, default_cache_dir, eight_bit, fit_size, read_npz_cache,
                                             user_cache_dir)

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]

CACHE_VERSION = "hf-v2"  # bump when the decoding or the cache layout changes
OLD_CACHE_VERSION = "hf-v1"  # the .npz caches of earlier versions: converted when found
IMAGE_COLUMNS = ("img", "image")  # the usual names, when no single Image feature says which
LABEL_COLUMNS = ("label", "fine_label")  # fine_label: CIFAR-100's 100 classes, as data.name=cifar100 reads
_GRAY_MODES = ("L", "1")  # kept as one channel; every other mode is converted to RGB
INSTALL = 'pip install "bornagain-kd[hf]"'


def import_datasets():
    """The `datasets` module, or a UserError saying how to install it."""
    try:
        import datasets  # noqa: PLC0415  (optional dependency: imported only when data.name=hf)
    except ImportError:
        raise UserError(f"data.name=hf needs the Hugging Face `datasets` package: {INSTALL}") from None
    return datasets


@contextlib.contextmanager
def _quiet_bars(datasets):
    """`datasets` draws its own bars (download, 'Generating train split'); off where ours are
    (BORNAGAIN_NO_PROGRESS, engine/run_log.py)."""
    utils = datasets.utils.logging
    was = utils.is_progress_bar_enabled()
    if not bars_shown(True):
        utils.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            utils.enable_progress_bar()


def open_splits(root: str) -> dict:
    """{split name: datasets.Dataset} of a save_to_disk folder, another local folder or a hub id."""
    datasets = import_datasets()
    path = Path(root).expanduser()
    with _quiet_bars(datasets):
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            elif path.is_file():
                raise UserError(f"data.root={root} is a file: data.name=hf takes the folder that holds the dataset's "
                                "files (train-*.parquet and test-*.parquet, a save_to_disk folder, an image folder) "
                                "or a hub id")
            else:
                loaded = datasets.load_dataset(str(path) if path.is_dir() else root)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, not found, unreadable files: the library's many errors
            where = "this local folder" if path.is_dir() else "the hub (there is no local folder of that name)"
            raise UserError(f"data.root={root}: `datasets` cannot load it from {where} ({describe(e, 200)}); "
                            "give a save_to_disk folder, a folder of parquet files or images, or a hub id while "
                            "online (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE unset) to download it once") from None
    if isinstance(loaded, datasets.Dataset):  # one split saved alone: its recorded name, else "train"
        return {str(loaded.split or "train"): loaded}
    return dict(loaded)


def pick_split(splits: dict, name: str, key: str, root: str):
    if name not in splits:
        raise UserError(f"{key}={name!r}: {root} has no such split; its splits are {', '.join(map(repr, splits))}: "
                        f"set {key} to one of them")
    return splits[name]


def _pick(features: dict, given: str | None, kind, usual: tuple[str, ...], key: str, what: str, root: str) -> str:
    """The column of ``kind`` (datasets.Image / ClassLabel): ``given``, else the only one, else a usual name."""
    listing = ", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())
    if given is not None:
        if given not in features:
            raise UserError(f"{key}={given!r} is not a column of {root}; its columns are {listing}: "
                            f"set {key} to the one holding the {what}")
        return given
    of_kind = [c for c, f in features.items() if isinstance(f, kind)]
    if len(of_kind) == 1:
        return of_kind[0]
    named = [c for c in usual if c in features]
    if named:
        return named[0]
    raise UserError(f"cannot tell which column of {root} holds the {what} (columns: {listing}): "
                    f"set {key}=NAME")


def pick_columns(features: dict, image_column: str | None, label_column: str | None, root: str) -> tuple[str, str]:
    """(image column, label column), checked: the images an Image feature, the labels integers."""
    datasets = import_datasets()
    image = _pick(features, image_column, datasets.Image, IMAGE_COLUMNS, "data.image_column", "images", root)
    label = _pick(features, label_column, datasets.ClassLabel, LABEL_COLUMNS, "data.label_column", "labels", root)
    if not isinstance(features[image], datasets.Image):
        images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        raise UserError(f"column {image!r} of {root} is {features[image]!r}, not images (the Image columns: "
                        f"{images or 'none'}): set data.image_column, or cast it with ds.cast_column({image!r}, "
                        "datasets.Image()) and save the dataset again")
    feature = features[label]
    if not isinstance(feature, datasets.ClassLabel) and not (
            isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        raise UserError(f"column {label!r} of {root} is {feature!r}, not class labels: set data.label_column to a "
                        f"ClassLabel or integer column, or encode it with ds.class_encode_column({label!r})")
    return image, label


def _pixels(image, row: int, what: str, size: int | None = None) -> np.ndarray:
    """(h, w) uint8 for a gray image, (h, w, 3) for every other mode (P, RGBA, CMYK, ... converted to RGB), resized
    to ``size`` (data.image_size: shorter side, centre crop) where given."""
    if image is None:
        raise UserError(f"{what}: row {row} has no image: drop the empty rows (ds.filter) and save the dataset again")
    image = eight_bit(image, f"{what}: row {row}")  # 16-bit gray scaled, not clipped
    if image.mode != "L":
        image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    return np.asarray(fit_size(image, size), dtype=np.uint8)


def split_labels(ds, label_column: str, what: str) -> np.ndarray:
    labels = np.asarray(ds.select_columns([label_column]).with_format("numpy")[:][label_column])  # (n,)
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise UserError(f"{what}: the labels of column {label_column!r} must be class numbers 0..K-1, but they hold "
                        f"{'missing values' if labels.dtype.kind not in 'iu' else int(labels.min())} (an unlabelled "
                        "split, such as some datasets' test split): choose a labelled one with data.test_split")
    if not labels.size:
        raise UserError(f"{what} holds no images: choose a split with images")
    return labels.astype(np.int64)


def decode_split_into(writer: ArrayWriter, split: str, ds, image_column: str, label_column: str, what: str, *,
                      size: int | None, shape: tuple[int, int] | None) -> tuple[tuple[int, int], bool]:
    """Decode one split into ``writer``'s (n, 3, h, w) uint8 array, a batch of rows at a time (a split's PIL images
    are never all in memory); a gray image is repeated over the three channels. ``shape``: the (h, w) every image
    must have (the first image's, where None); the first odd image is refused, naming data.image_size.
    Returns ((h, w), whether every image was gray)."""
    writer.set_labels(split, split_labels(ds, label_column, what))
    out, row, all_gray = None, 0, True
    for batch in ds.select_columns([image_column]).iter(batch_size=256):
        for image in batch[image_column]:
            pixels = _pixels(image, row, what, size)  # (h, w) or (h, w, 3)
            if shape is None:
                shape = pixels.shape[:2]
            if pixels.shape[:2] != shape:
                raise UserError(f"{what}: images must all have one size, but row {row} is {pixels.shape[1]}x"
                                f"{pixels.shape[0]} and the first is {shape[1]}x{shape[0]}: set data.image_size=N to "
                                "resize every image once, as the cache is written (shorter side to N, centre crop), "
                                "or resize them first (ds.map with PIL's resize) and save the dataset again")
            if out is None:
                out = writer.new_images(split, (len(ds), 3, *shape))
            all_gray &= pixels.ndim == 2
            out[row] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            row += 1
    return shape, all_gray


def class_names(feature, train_labels: np.ndarray, test_labels: np.ndarray, root: str) -> tuple[str, ...]:
    """The ClassLabel's names, or "0".."K-1" with K = the largest label + 1."""
    names = getattr(feature, "names", None)
    top = int(max(train_labels.max(), test_labels.max()))
    if names:
        if top >= len(names):
            raise UserError(f"{root}: a label is {top}, but the ClassLabel names only {len(names)} classes: "
                            "fix the labels or the ClassLabel's names")
        return tuple(str(n) for n in names)
    return tuple(str(c) for c in range(top + 1))


def _folder_fingerprint(folder: Path, request: str, version: str = CACHE_VERSION) -> str:
    """SHA-256 over the cache version, what was asked (root, splits, columns) and every file under a local dataset
    folder (path, size, mtime; hidden ones skipped, as `datasets` skips them, and our cache is one): read before
    `datasets` opens anything, so a cache hit costs a directory walk, not a load (60,000 files: seconds)."""
    h = hashlib.sha256(f"{version}\0{request}".encode())
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            st = os.stat(os.path.join(top, name))
            h.update(f"\n{os.path.relpath(os.path.join(top, name), folder)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _arrow_fingerprint(request: str, parts: list, version: str = CACHE_VERSION) -> str | None:
    """For a hub id: SHA-256 over the cache version, what was asked and the arrow files `datasets` made of it in
    its cache (path, size, mtime); None for a dataset held only in memory."""
    h = hashlib.sha256(f"{version}\0{request}".encode())
    for ds in parts:
        files = [f["filename"] for f in ds.cache_files]
        if not files:
            return None
        for name in files:
            st = os.stat(name)
            h.update(f"\n{name}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _cache_folder(root: str, request: str) -> Path:
    """ROOT/.bornagain-cache/hf-<key>/ for a local folder (as image folders), the user cache for a hub id;
    the key: what was asked, so other splits, columns or sizes of one dataset are cached apart."""
    folder = Path(root).expanduser()
    cache_dir = default_cache_dir(folder) if folder.is_dir() else user_cache_dir()
    return cache_dir / f"hf-{hashlib.sha256(request.encode()).hexdigest()[:16]}"


def load_hf_dataset(root: str, *, splits: tuple[str, str] = ("train", "test"),
                    columns: tuple[str | None, str | None] = (None, None),
                    image_size: int | None = None) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class names) of a Hugging Face dataset; ``splits`` = (train, test) split names, ``columns`` =
    (image, label) column names or None to detect them; ``image_size``: data.image_size. Decoded once into the
    memory-mapped cache (vision/array_cache.py), then mapped."""
    folder = Path(root).expanduser()
    request = f"{folder.resolve() if folder.is_dir() else root}\0{splits}\0{columns}"
    if image_size is not None:
        request += f"\0{image_size}"
    cache = _cache_folder(root, request)
    fingerprint = _folder_fingerprint(folder, request) if folder.is_dir() else None
    cached = read_arrays(cache, fingerprint) if fingerprint else None
    if cached is not None:
        return cached
    opened = open_splits(root)
    train_ds = pick_split(opened, splits[0], "data.train_split", root)
    test_ds = pick_split(opened, splits[1], "data.test_split", root)
    image, label = pick_columns(train_ds.features, *columns, root)
    missing = [c for c in (image, label) if c not in test_ds.features]
    if missing:
        raise UserError(f"the {splits[1]!r} split of {root} lacks the column(s) {missing} that {splits[0]!r} has "
                        f"(its columns: {', '.join(test_ds.features)}): choose splits of one layout")
    if fingerprint is None:  # a hub id: known by the files `datasets` keeps in its cache
        fingerprint = _arrow_fingerprint(request, [train_ds, test_ds])
    if fingerprint is None:  # held only in memory by `datasets`: its own fingerprints of the two splits' contents
        fingerprint = hashlib.sha256(f"{CACHE_VERSION}\0{request}\0{getattr(train_ds, '_fingerprint', '')}"
                                     f"\0{getattr(test_ds, '_fingerprint', '')}".encode()).hexdigest()

    def build(writer: ArrayWriter) -> tuple[str, ...]:
        old = cache.with_name(f"{cache.name}.npz")  # an earlier version's cache: the same key, no image size
        old_fingerprint = None if image_size is not None else (
            _folder_fingerprint(folder, request, OLD_CACHE_VERSION) if folder.is_dir()
            else _arrow_fingerprint(request, [train_ds, test_ds], OLD_CACHE_VERSION))
        cached = read_npz_cache(old, old_fingerprint) if old_fingerprint else None
        if cached is not None:
            return convert_npz_cache(old, cached, writer)
        shape, train_gray = decode_split_into(writer, "train", train_ds, image, label, f"split {splits[0]!r} of {root}",
                                              size=image_size, shape=None)
        _, test_gray = decode_split_into(writer, "test", test_ds, image, label, f"split {splits[1]!r} of {root}",
                                         size=image_size, shape=shape)
        if train_gray and test_gray:  # every image gray: one channel (a gray split beside a colour one stays RGB)
            for split in ("train", "test"):
                writer.replace_images(split, writer.images[split][:, :1])
        return class_names(train_ds.features[label], writer.labels["train"], writer.labels["test"], root)

    return load_or_build(cache, fingerprint, build, what=f"{root} (data.name=hf)")
