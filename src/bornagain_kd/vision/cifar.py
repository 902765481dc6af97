"""CIFAR-10 / CIFAR-100 in the official python-pickle format, with a verified download.

Layouts (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html):
    cifar-10-batches-py/  data_batch_1..5, test_batch, batches.meta
    cifar-100-python/     train, test, meta          (we use the 100 fine labels)
Each data file is a pickled dict with b"data" (n, 3072) uint8 rows laid out as
(3, 32, 32) channel-major, and b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100).

Returns plain numpy arrays; `datasets.py` turns them into tensors.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bornagain_kd.errors import UserError

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant lives and how its pickles are keyed."""

    dir_name: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    url: str
    md5: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        dir_name="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarLayout(
        dir_name="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles written by Python 3 use it: str -> bytes in latin-1, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


# The only globals a CIFAR python-version file may name. The official files are
# pickled dicts of bytes keys -> lists (labels, filenames, label names), bytes
# and ints, plus one numpy array (b"data"); only the array needs globals:
#   numpy.core.multiarray._reconstruct  ndarray.__reduce__ as the official files
#                                       (Python 2, numpy 1.x) spell it
#   numpy._core.multiarray._reconstruct the same function as numpy >= 2 spells it
#   numpy.ndarray, numpy.dtype          the array type and its dtype, arguments
#                                       of _reconstruct / rebuilt from their state
#   numpy._core.numeric._frombuffer     how ndarray.__reduce_ex__ rebuilds arrays
#   numpy.core.numeric._frombuffer      under pickle protocol 5 (numpy 2 / 1.x);
#                                       protocol 5 is pickle's default from Python 3.14
#   _codecs.encode                      how protocol 2 (the official files' protocol)
#                                       stores bytes when written by Python 3; served
#                                       by `_latin1_encode`, which only encodes to latin-1
# Anything else (os.system, builtins.exec, ...) is refused before it is looked up.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _RefusedGlobal(pickle.UnpicklingError):
    """The file names a global that no official CIFAR file contains."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild dicts, lists, bytes, ints and numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    # The CIFAR files are pickles (the official format). A plain pickle.load would run
    # any code a crafted file names, so `_CifarUnpickler` only lets through the globals
    # that the official files need (`_ALLOWED_GLOBALS`) and refuses anything else.
    # encoding="bytes" as in the official loader: Python 2 strings come back as bytes.
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as err:
        raise UserError(
            f"refusing to load {path}: it is not an official CIFAR batch file (it refers to {err}, which the "
            "official files never contain, and loading it could run code); delete it (or its whole folder) and let bornagain download the "
            "dataset again, or re-extract the official archive"
        ) from None
    except (
        OSError, pickle.UnpicklingError, EOFError, ValueError,
        TypeError, AttributeError, ImportError, IndexError, KeyError, MemoryError, RecursionError,
    ) as err:
        raise UserError(
            f"cannot read CIFAR file {path} ({err}): it is corrupt or not a CIFAR python pickle; "
            "delete its folder and let bornagain download it again"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"CIFAR file {path} holds a {type(obj).__name__}, not a dict: it is not an official CIFAR batch file; "
            "delete its folder and let bornagain download it again"
        )
    return obj


def _read_split(directory: Path, files: tuple[str, ...], label_key: bytes) -> Split:
    images, labels = [], []
    for name in files:
        batch = _unpickle(directory / name)
        if b"data" not in batch or label_key not in batch:
            raise UserError(
                f"CIFAR file {directory / name} lacks the keys b'data' and {label_key!r}: it is not the "
                "official python version; delete the folder and let bornagain download it again"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))  # rows are (3, 32, 32) channel-major
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def find_cifar_dir(root: str | os.PathLike, layout: CifarLayout) -> Path | None:
    """The CIFAR directory given `root` = the directory itself or its parent; None if absent."""
    root = Path(root)
    for candidate in (root, root / layout.dir_name):
        if (candidate / layout.meta_file).is_file():
            return candidate
    return None


def read_cifar_dir(directory: Path, layout: CifarLayout) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, classes) from an extracted CIFAR directory."""
    missing = [f for f in (*layout.train_files, layout.test_file, layout.meta_file) if not (directory / f).is_file()]
    if missing:
        raise UserError(
            f"CIFAR directory {directory} is incomplete (missing {', '.join(missing)}): "
            "delete it and let bornagain download it again, or re-extract the official archive"
        )
    meta = _unpickle(directory / layout.meta_file)
    if layout.names_key not in meta:
        raise UserError(f"CIFAR meta file {directory / layout.meta_file} lacks {layout.names_key!r}: re-download it")
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    train = _read_split(directory, layout.train_files, layout.label_key)
    test = _read_split(directory, (layout.test_file,), layout.label_key)
    for split_name, (_, labels) in (("train", train), ("test", test)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise UserError(
                f"CIFAR {split_name} labels in {directory} fall outside 0..{len(classes) - 1}: "
                "the files are corrupt or mixed up; delete the folder and download again"
            )
    return train, test, classes


def _fetch(url: str, dest, md5: str) -> str:
    """Stream `url` into the open file `dest`, showing progress; return the hex MD5."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url.rsplit('/', 1)[-1]}") as bar:
                while chunk := response.read(1 << 20):
                    dest.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise UserError(
            f"cannot download {url} ({err}): check the network, or download it by hand, check that its MD5 is "
            f"{md5}, and extract it into the data root"
        ) from None
    return digest.hexdigest()


def _safe_members(archive: tarfile.TarFile, archive_name: str) -> list[tarfile.TarInfo]:
    """All members, refusing anything that could write outside the target folder."""
    members = archive.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or os.path.isabs(m.name) or ".." in parts:
            raise UserError(f"archive {archive_name} holds an unsafe path {m.name!r}; refusing to extract it")
        if not (m.isfile() or m.isdir()):
            raise UserError(f"archive {archive_name} holds a link or special file {m.name!r}; refusing to extract it")
    return members


def download_and_extract(url: str, md5: str, root: Path, dir_name: str) -> Path:
    """Download the archive at `url` into `root`, check its MD5, extract `dir_name`.

    The archive goes to a temporary file in `root` and is removed afterwards; a
    wrong MD5 removes it and raises. Extraction goes to a temporary directory in
    `root` that is renamed to `root / dir_name` only when complete, so an
    interrupted run never leaves a half-written dataset behind.
    """
    made = [p for p in (root, *root.parents) if not p.exists()]  # the folders this attempt creates, deepest first
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(url, md5, root, dir_name)
    except BaseException:
        for folder in made:  # a failed attempt leaves no empty data folder behind (a folder it found stays)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _download_into(url: str, md5: str, root: Path, dir_name: str) -> Path:
    fd, archive_path = tempfile.mkstemp(dir=root, prefix=".download-", suffix=".tar.gz")
    extract_dir = None
    try:
        with os.fdopen(fd, "wb") as f:
            got = _fetch(url, f, md5)
        if got != md5:
            raise UserError(
                f"the archive downloaded from {url} has MD5 {got}, expected {md5}: it is corrupt or not the "
                "official file; the partial download was removed, run again (or download it by hand and check its MD5)"
            )
        extract_dir = tempfile.mkdtemp(dir=root, prefix=".extract-")
        try:
            with tarfile.open(archive_path, "r:*") as archive:
                members = _safe_members(archive, url)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own safety filter too
                    archive.extractall(extract_dir, members=members, filter="data")
                else:
                    archive.extractall(extract_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"cannot extract the archive from {url} ({err}): download it again") from None
        extracted = Path(extract_dir) / dir_name
        if not extracted.is_dir():
            raise UserError(f"the archive from {url} has no {dir_name}/ folder: it is not the expected dataset")
        target = root / dir_name
        try:
            os.rename(extracted, target)
        except OSError:
            if not target.is_dir():  # another process may have finished first; otherwise a real failure
                raise
        return target
    finally:
        if os.path.exists(archive_path):
            os.remove(archive_path)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)


def load_cifar(
    name: str,
    root: str | os.PathLike,
    *,
    download: bool = True,
    url: str | None = None,
    md5: str | None = None,
) -> tuple[Split, Split, tuple[str, ...]]:
    """Read CIFAR-10 or CIFAR-100 (`name` "cifar10" / "cifar100") under `root`.

    `root` may be the CIFAR directory itself or its parent. If it is absent and
    `download` is set, the official archive (or `url`, checked against `md5`)
    is downloaded into `root` and extracted there.
    Returns ((train_images, train_labels), (test_images, test_labels), classes)
    with images (n, 3, 32, 32) uint8 and labels (n,) int64.
    """
    layout = CIFAR_LAYOUTS[name]
    directory = find_cifar_dir(root, layout)
    if directory is None:
        if not download:
            raise UserError(
                f"{name} not found under {root} (expected {Path(root) / layout.dir_name}/): "
                f"allow the download, or download {layout.url} and extract it there"
            )
        directory = download_and_extract(url or layout.url, md5 or layout.md5, Path(root), layout.dir_name)
    return read_cifar_dir(directory, layout)
