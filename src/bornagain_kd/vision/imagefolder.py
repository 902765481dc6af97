"""An image-folder dataset decoded once into uint8 arrays and cached.

Layout:  root/train/<class>/*.{png,jpg,jpeg}  and  root/test/<class>/*  with the
same class folders in both; classes are sorted by name (label = position).

Decoding tens of thousands of small JPEGs with Pillow takes seconds, so the
decoded arrays are cached in one .npz (no pickle) together with a fingerprint
of the folder (relative paths, sizes, mtimes): the next load reads the .npz
unless a file was added, removed or changed, in which case it decodes again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bornagain_kd.files import atomic_write
from bornagain_kd.errors import UserError

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = "imagefolder-v1"  # bump when the cache layout changes
_PARALLEL_MIN_IMAGES = 4096  # below this a process pool costs more than it saves
_CHUNK = 2048  # images per worker task


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_SUFFIXES)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int, int, int]]]]:
    """Check the layout and list the images.

    Returns (classes, files) with files[split] = sorted (relative path, label,
    size in bytes, mtime in ns) for split in ("train", "test").
    """
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist: pass the folder that holds train/ and test/")
    split_dirs = {split: root / split for split in ("train", "test")}
    missing = [str(d) for d in split_dirs.values() if not d.is_dir()]
    if missing:
        raise UserError(
            f"image folder {root} needs train/<class>/ and test/<class>/ sub-folders; missing: {', '.join(missing)}"
        )
    classes_by_split = {split: _class_dirs(d) for split, d in split_dirs.items()}
    classes = classes_by_split["train"]
    if not classes:
        raise UserError(f"{split_dirs['train']} has no class folders: put each class's images in train/<class>/")
    if classes_by_split["test"] != classes:
        only_train = sorted(set(classes) - set(classes_by_split["test"]))
        only_test = sorted(set(classes_by_split["test"]) - set(classes))
        raise UserError(
            f"train/ and test/ in {root} must hold the same class folders; only in train: {only_train}, "
            f"only in test: {only_test}. Add or rename folders so both list the same classes"
        )
    files: dict[str, list[tuple[str, int, int, int]]] = {}
    for split, split_dir in split_dirs.items():
        entries = []
        for label, cls in enumerate(classes):
            images = sorted((e for e in os.scandir(split_dir / cls) if _is_image(e)), key=lambda e: e.name)
            if not images and split == "train":
                raise UserError(
                    f"class folder {split_dir / cls} has no images ({', '.join(IMAGE_SUFFIXES)}): "
                    "add images or remove the folder (from test/ too)"
                )
            for e in images:
                st = e.stat()
                entries.append((f"{split}/{cls}/{e.name}", label, st.st_size, st.st_mtime_ns))
        if not entries:
            raise UserError(f"{split_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): add the {split} images")
        files[split] = entries
    return tuple(classes), files


def folder_fingerprint(classes: tuple[str, ...], files: dict[str, list[tuple[str, int, int, int]]]) -> str:
    """SHA-256 over the cache version, the classes and every (path, size, mtime)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    h.update("\0".join(classes).encode())
    for split in ("train", "test"):
        for rel, label, size, mtime in files[split]:
            h.update(f"\n{rel}\t{label}\t{size}\t{mtime}".encode())
    return h.hexdigest()


def eight_bit(image: "Image.Image", what: str) -> "Image.Image":
    """16-bit gray (I;16, I;16B, ...) scaled to 8-bit gray (value / 257, rounded: 65535 -> 255), where Pillow's
    own convert would clip every value above 255 to white; 32-bit modes (I, F) carry no known range: refused."""
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.uint32)  # (h, w) 0..65535
        return Image.fromarray(((pixels + 128) // 257).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        raise UserError(f"{what} is a 32-bit image (mode {image.mode}), whose range bornagain cannot know: save the "
                        "images as 8-bit or 16-bit (e.g. Pillow: image.convert('I;16') after scaling)")
    return image


def _decode_one(path: str) -> np.ndarray:
    """(h, w, 3) uint8; every mode (L, P, RGBA, CMYK, 16-bit gray ...) is converted to RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(eight_bit(im, path).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot decode image {path} ({err}): replace or delete the file") from None


def _decode_chunk(paths: list[str]) -> np.ndarray:
    """(n, h, w, 3) uint8 for images of one size; a size mismatch names both files."""
    first = _decode_one(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        img = _decode_one(path)
        if img.shape != first.shape:
            raise UserError(
                f"images must all have one size, but {path} is {img.shape[1]}x{img.shape[0]} and {paths[0]} is "
                f"{first.shape[1]}x{first.shape[0]}: resize the folder's images to one size first"
            )
        out[i] = img
    return out


def decode_images(paths: list[str], workers: int | None = None) -> np.ndarray:
    """Decode `paths` to one (n, 3, h, w) uint8 array, in a process pool when there are many.

    Pillow decoding of small JPEGs is Python-bound (threads do not help), so
    large folders are split into chunks decoded by `workers` processes
    (default: all CPUs). The pool forks, as torch's DataLoader does on Linux:
    forkserver/spawn would re-run the caller's script in every worker, which
    breaks any script without an `if __name__ == "__main__":` guard. Where fork
    is unavailable (macOS, Windows) or the pool dies, decoding runs serially.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    parts = None
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if workers > 1 and len(paths) >= _PARALLEL_MIN_IMAGES and can_fork:
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_decode_chunk, chunks))
        except BrokenProcessPool as err:
            warnings.warn(f"the image-decoding worker pool failed ({err}); decoding in this process instead")
    if parts is None:
        parts = [_decode_chunk(c) for c in chunks]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise UserError(
            f"images in the folder have different sizes {sorted(s[:2] for s in shapes)} (h, w): "
            "resize them to one size first"
        )
    return np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2))  # (n, h, w, 3) -> (n, 3, h, w)


def user_cache_dir() -> Path:
    """$BORNAGAIN_CACHE_DIR, else $XDG_CACHE_HOME/bornagain, else ~/.cache/bornagain (as the compile record)."""
    base = os.environ.get("BORNAGAIN_CACHE_DIR")
    return Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bornagain"


def default_cache_dir(root: Path) -> Path:
    """root/.bornagain-cache/ if it can be written, else the user's cache (``user_cache_dir``)."""
    in_root = root / ".bornagain-cache"
    try:
        in_root.mkdir(exist_ok=True)
        if os.access(in_root, os.W_OK):
            return in_root
    except OSError:
        pass
    return user_cache_dir()


def _cache_file(root: Path, cache_dir: Path) -> Path:
    if cache_dir == root / ".bornagain-cache":
        return cache_dir / "imagefolder.npz"
    # A shared cache holds many folders: key the file by the folder's absolute path.
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"imagefolder-{key}.npz"


def read_cache(path: Path, fingerprint: str) -> tuple[Split, Split, tuple[str, ...]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            train = (z["train_images"], z["train_labels"])
            test = (z["test_images"], z["test_labels"])
            classes = tuple(str(c) for c in z["classes"])
    except (OSError, KeyError, ValueError, EOFError):
        return None  # missing, unreadable or from another version: decode again
    return train, test, classes


def write_cache(path: Path, fingerprint: str, train: Split, test: Split, classes: tuple[str, ...]) -> None:
    """Write atomically (temporary file + rename) so readers never see half a cache."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, fingerprint=np.array(fingerprint), classes=np.array(classes, dtype=str),
                     train_images=train[0], train_labels=train[1], test_images=test[0], test_labels=test[1])

    try:
        atomic_write(path, write)
    except OSError as err:
        warnings.warn(f"cannot write the image cache {path} ({err}); the next load decodes again")


def load_image_folder(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, classes) from root/{train,test}/<class>/*, decoded once and cached.

    images (n, 3, h, w) uint8 (every image converted to RGB), labels (n,) int64
    indexing the sorted class names. `cache_dir` defaults to `default_cache_dir`.
    """
    root = Path(root)
    classes, files = scan_image_folder(root)
    fingerprint = folder_fingerprint(classes, files)
    cache_path = _cache_file(root, Path(cache_dir) if cache_dir is not None else default_cache_dir(root))
    cached = read_cache(cache_path, fingerprint)
    if cached is not None:
        return cached
    n_train = len(files["train"])
    entries = files["train"] + files["test"]
    images = decode_images([str(root / rel) for rel, *_ in entries], workers)
    labels = np.array([label for _, label, *_ in entries], dtype=np.int64)
    train = (images[:n_train], labels[:n_train])
    test = (images[n_train:], labels[n_train:])
    write_cache(cache_path, fingerprint, train, test, classes)
    return train, test, classes
