"""An image-folder dataset decoded once into uint8 arrays and cached.

Layout:  root/train/<class>/*.{png,jpg,jpeg}  and  root/test/<class>/*  with the
same class folders in both; classes are sorted by name (label = position).

Decoding tens of thousands of small JPEGs with Pillow takes seconds (a million: many minutes), so the
decoded arrays are written once to a cache of memory-mappable .npy files (vision/array_cache.py) together with a
fingerprint of the folder (relative paths, sizes, mtimes) and of data.image_size: the next load maps the arrays
unless a file was added, removed or changed, in which case it decodes again. An .npz cache of an earlier version is
converted once.
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

from bornagain_kd.vision.array_cache import ArrayWriter, load_or_build
from bornagain_kd.errors import UserError
from bornagain_kd.files import user_cache_dir

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = "imagefolder-v2"  # bump when the decoding or the cache layout changes
OLD_CACHE_VERSION = "imagefolder-v1"  # the .npz caches of earlier versions: converted when found
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


def folder_fingerprint(classes: tuple[str, ...], files: dict[str, list[tuple[str, int, int, int]]],
                       image_size: int | None = None, *, version: str = CACHE_VERSION) -> str:
    """SHA-256 over the cache version, the image size asked for, the classes and every (path, size, mtime)."""
    h = hashlib.sha256(version.encode() if image_size is None else f"{version}\0{image_size}".encode())
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


def fit_size(image: "Image.Image", size: int | None) -> "Image.Image":
    """``image`` as it is (size None), else its shorter side resized to ``size`` (antialiased bicubic) and the
    centre ``size`` x ``size`` square cut out (data.image_size: done once, when the cache is written)."""
    if size is None or image.size == (size, size):
        return image
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _decode_one(path: str, size: int | None = None) -> np.ndarray:
    """(h, w, 3) uint8; every mode (L, P, RGBA, CMYK, 16-bit gray ...) is converted to RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(fit_size(eight_bit(im, path).convert("RGB"), size), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot decode image {path} ({err}): replace or delete the file") from None


RESIZE_HINT = ("set data.image_size=N to resize every image once, as the cache is written (shorter side to N, centre "
               "crop N x N), or resize the images to one size first")


def mixed_sizes(path: str, shape: tuple[int, ...], first: str, first_shape: tuple[int, ...],
                hint: str = RESIZE_HINT) -> UserError:
    return UserError(f"images must all have one size, but {path} is {shape[1]}x{shape[0]} and {first} is "
                     f"{first_shape[1]}x{first_shape[0]}: {hint}")


def _decode_chunk(task: tuple[list[str], int | None, tuple[int, ...], str, str]) -> np.ndarray:
    """(n, h, w, 3) uint8 for images of the size ``shape``; the first odd image is refused, naming both files."""
    paths, size, shape, first, hint = task
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        img = _decode_one(path, size)
        if img.shape != shape:
            raise mixed_sizes(path, img.shape, first, shape, hint)
        out[i] = img
    return out


def decode_into(out: np.ndarray, paths: list[str], *, size: int | None, shape: tuple[int, ...], first: str,
                workers: int | None = None, hint: str = RESIZE_HINT) -> None:
    """Decode ``paths`` into ``out`` (n, 3, h, w) uint8 (a memory-mapped cache file), a chunk at a time, in a process
    pool when there are many.

    Pillow decoding of small JPEGs is Python-bound (threads do not help), so
    large folders are split into chunks decoded by `workers` processes
    (default: all CPUs) and written in order as they come back: no more than a few chunks are ever in memory. The
    pool forks, as torch's DataLoader does on Linux:
    forkserver/spawn would re-run the caller's script in every worker, which
    breaks any script without an `if __name__ == "__main__":` guard. Where fork
    is unavailable (macOS, Windows) or the pool dies, decoding runs serially.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    per_chunk = max(16, min(_CHUNK, (32 << 20) // max(1, int(np.prod(shape)))))  # at most ~32 MB a chunk
    tasks = [(paths[i : i + per_chunk], size, shape, first, hint) for i in range(0, len(paths), per_chunk)]
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    done = 0
    if workers > 1 and len(paths) >= _PARALLEL_MIN_IMAGES and can_fork:
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for part in pool.map(_decode_chunk, tasks):  # in order; a worker's UserError is raised here
                    out[done:done + part.shape[0]] = part.transpose(0, 3, 1, 2)  # (n, h, w, 3) -> (n, 3, h, w)
                    done += part.shape[0]
        except BrokenProcessPool as err:
            warnings.warn(f"the image-decoding worker pool failed ({err}); decoding in this process instead")
    for task in tasks[done // per_chunk:] if done < len(paths) else ():
        part = _decode_chunk(task)
        out[done:done + part.shape[0]] = part.transpose(0, 3, 1, 2)
        done += part.shape[0]


def decode_images(paths: list[str], workers: int | None = None, size: int | None = None,
                  hint: str = RESIZE_HINT) -> np.ndarray:
    """Decode ``paths`` to one (n, 3, h, w) uint8 array in memory (a few images: the cache uses decode_into);
    ``hint``: what a mixed-size error tells the user to do."""
    first = _decode_one(paths[0], size)
    out = np.empty((len(paths), 3, *first.shape[:2]), dtype=np.uint8)
    decode_into(out, paths, size=size, shape=first.shape, first=paths[0], workers=workers, hint=hint)
    return out


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


def _cache_name(root: Path, cache_dir: Path, image_size: int | None) -> str:
    size = "" if image_size is None else f"-{image_size}px"
    if cache_dir == root / ".bornagain-cache":
        return f"imagefolder{size}"
    # A shared cache holds many folders: key the name by the folder's absolute path.
    return f"imagefolder-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}{size}"


def read_npz_cache(path: Path, fingerprint: str) -> tuple[Split, Split, tuple[str, ...]] | None:
    """An .npz cache of the tool's earlier versions (read whole into memory), or None."""
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


def convert_npz_cache(old: Path, cached: tuple[Split, Split, tuple[str, ...]], writer: ArrayWriter) -> tuple[str, ...]:
    """Write an earlier version's .npz cache (read whole) into ``writer`` and remove it, saying so."""
    train, test, classes = cached
    for split, (images, labels) in (("train", train), ("test", test)):
        writer.replace_images(split, images)
        writer.set_labels(split, labels)
    print(f"bornagain: converting the image cache {old} (an earlier version's .npz, read whole into memory) to "
          f"memory-mapped arrays in {writer.folder}; the .npz is removed", flush=True)
    writer.on_commit.append(lambda: old.unlink(missing_ok=True))  # only once the new cache is whole
    return classes


def load_image_folder(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    image_size: int | None = None,
) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, classes) from root/{train,test}/<class>/*, decoded once into a cache and memory-mapped.

    images (n, 3, h, w) uint8 (every image converted to RGB; with ``image_size`` resized once, shorter side to it
    and centre-cropped square), labels (n,) int64 indexing the sorted class names. `cache_dir` defaults to
    `default_cache_dir`; the cache's layout and who writes it: vision/array_cache.py.
    """
    root = Path(root)
    classes, files = scan_image_folder(root)
    fingerprint = folder_fingerprint(classes, files, image_size)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    name = _cache_name(root, base, image_size)

    def build(writer: ArrayWriter) -> tuple[str, ...]:
        old = base / f"{name}.npz"  # the earlier versions' file (same name, no image size)
        cached = read_npz_cache(old, folder_fingerprint(classes, files, None, version=OLD_CACHE_VERSION)) \
            if image_size is None else None
        if cached is not None:
            return convert_npz_cache(old, cached, writer)
        first_path = str(root / files["train"][0][0])
        shape = _decode_one(first_path, image_size).shape  # (h, w, 3): every image must match it
        for split in ("train", "test"):
            paths = [str(root / rel) for rel, *_ in files[split]]
            out = writer.new_images(split, (len(paths), shape[2], shape[0], shape[1]))
            decode_into(out, paths, size=image_size, shape=shape, first=first_path, workers=workers)
            writer.set_labels(split, np.array([label for _, label, *_ in files[split]], dtype=np.int64))
        return classes

    n = len(files["train"]) + len(files["test"])
    return load_or_build(base / name, fingerprint, build, what=f"{root} ({n} images)")
