"""Decoded image splits on disk as memory-mappable .npy files: written once per node, mapped by every process.

    CACHE/<name>/                  one decoded dataset (an image folder, a Hugging Face dataset) at one image size
        train_images.npy           (n, c, h, w) uint8          test_images.npy
        train_labels.npy           (n,) int64                  test_labels.npy
        meta.json                  format, fingerprint, classes, shapes, checksums: written last, inside a temporary
                                   folder renamed into place, so a folder with a meta.json is whole

Every process maps the image arrays (numpy ``mmap_mode="c"``: pages come from the page cache, shared by every
process of the node, and nothing is written back), so two processes of one node hold one copy of the images, and
a process's own (anonymous) memory holds only what a batch needs.

Who writes: under torchrun, the node's local rank 0; its other ranks wait for the folder to appear (no collective
with a timeout is held while it decodes; if the writer fails, torchrun stops the others). Outside torchrun,
processes that start together take turns through a lock file, so the first writes and the others map its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bornagain_kd.errors import UserError
from bornagain_kd.files import exclusive_lock

FORMAT = "bornagain-arrays-v1"
SPLITS = ("train", "test")
META = "meta.json"
STUCK_SECONDS = 300  # a waiting rank gives up when nobody has written the cache it expects for this long
_CHECKSUM_ROWS = 256  # images read for a folder's checksum: enough to see a rewritten or truncated file, cheap to read

# (images (n, c, h, w) uint8, labels (n,) int64)
Split = tuple[np.ndarray, np.ndarray]


def sampled_checksum(images: np.ndarray) -> str:
    """SHA-256 over the shape and up to 256 evenly spaced images (reading a 16 GB split whole at every start would
    cost a minute; a rewritten, truncated or zeroed file changes these rows too)."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    n = images.shape[0]
    for i in np.unique(np.linspace(0, n - 1, min(n, _CHECKSUM_ROWS)).astype(np.int64)) if n else ():
        h.update(np.ascontiguousarray(images[i]).tobytes())
    return h.hexdigest()


def labels_checksum(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def read_arrays(folder: Path, fingerprint: str) -> tuple[Split, Split, tuple[str, ...]] | None:
    """(train, test, classes) mapped from ``folder``, or None where it is missing, of another fingerprint or format,
    or damaged (shapes or checksums differ from its meta.json): then it is written again."""
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
            return None
        splits = []
        for split in SPLITS:
            images = np.load(folder / f"{split}_images.npy", mmap_mode="c")  # (n, c, h, w) uint8, mapped
            labels = np.load(folder / f"{split}_labels.npy")  # (n,) int64: small, read
            info = meta["splits"][split]
            if (list(images.shape) != info["shape"] or images.dtype != np.uint8 or labels.shape != images.shape[:1]
                    or labels_checksum(labels) != info["labels_sha256"]
                    or sampled_checksum(images) != info["images_sample_sha256"]):
                return None
            splits.append((images, labels.astype(np.int64, copy=False)))
        classes = tuple(str(c) for c in meta["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return splits[0], splits[1], classes


class ArrayWriter:
    """Fills a cache folder's arrays in a temporary folder beside it; ``commit`` renames it into place."""

    def __init__(self, folder: Path):
        self.folder = folder
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # a writer killed before (the lock is ours now)
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        self.tmp.mkdir(parents=True)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.on_commit: list[Callable[[], None]] = []  # after the rename (an earlier cache removed only then)

    def new_images(self, split: str, shape: tuple[int, int, int, int]) -> np.ndarray:
        """A writable (n, c, h, w) uint8 array on disk for ``split`` (filled by the caller, a chunk at a time)."""
        self.images[split] = _allocated(self.tmp / f"{split}_images.npy", shape)
        return self.images[split]

    def replace_images(self, split: str, images: np.ndarray) -> None:
        """Write ``images`` (n, c, h, w) as the split's array, a chunk at a time: an earlier version's arrays, or a
        view of the split's own array (its first channel, where every image was gray)."""
        path = self.tmp / f"{split}_images.npy"
        new = _allocated(self.tmp / f"{split}_images.new", tuple(images.shape))
        for start in range(0, images.shape[0], 4096):
            new[start:start + 4096] = images[start:start + 4096]
        new.flush()
        os.replace(self.tmp / f"{split}_images.new", path)  # a mapped old file stays readable until unmapped
        self.images[split] = new

    def set_labels(self, split: str, labels: np.ndarray) -> None:
        self.labels[split] = np.ascontiguousarray(labels, dtype=np.int64)

    def commit(self, fingerprint: str, classes: tuple[str, ...], extra: dict | None = None) -> None:
        info = {}
        for split in SPLITS:
            images, labels = self.images[split], self.labels[split]
            images.flush()
            np.save(self.tmp / f"{split}_labels.npy", labels)
            info[split] = {"shape": list(images.shape), "labels_sha256": labels_checksum(labels),
                           "images_sample_sha256": sampled_checksum(images)}
        meta = {"format": FORMAT, "fingerprint": fingerprint, "classes": list(classes), "splits": info, **(extra or {})}
        (self.tmp / META).write_text(json.dumps(meta, indent=1))
        self.images.clear()  # unmap before the rename
        if self.folder.exists():  # a stale or damaged copy (another fingerprint): replaced
            shutil.rmtree(self.folder)
        os.replace(self.tmp, self.folder)
        for action in self.on_commit:
            action()

    def abort(self) -> None:
        self.images.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _allocated(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A writable (shape) uint8 .npy array on disk with its blocks reserved now: a sparse file would let a full disk
    kill the writer with SIGBUS halfway through, where reserving it raises ENOSPC (an OSError, one clear message)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate") and array.size:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array


def _nobody_writes(lock: Path) -> bool:
    """Whether no process holds ``lock`` now (a non-blocking try, released at once)."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _recorded_fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / META).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def local_rank() -> tuple[int, int]:
    """(this process's rank on its node, processes on the node) under torchrun; (0, 1) outside."""
    try:
        return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def load_or_build(folder: Path, fingerprint: str, build: Callable[[ArrayWriter], tuple[str, ...]], *,
                  what: str, poll_seconds: float = 0.5) -> tuple[Split, Split, tuple[str, ...]]:
    """The cache ``folder`` mapped, built first by ``build(writer) -> classes`` where it is missing or stale: by the
    node's local rank 0 under torchrun (the other ranks wait for it), by the first of processes that start
    together otherwise. ``what`` names the data in the messages."""
    rank, local_size = local_rank()
    lock = folder.parent / f".{folder.name}.lock"
    if rank > 0 and local_size > 1:  # local rank 0 writes it: wait, then map
        said, polls, idle_since = False, 0, None
        while (cached := read_arrays(folder, fingerprint)) is None:
            if not said:
                print(f"bornagain: local rank {rank} waits for local rank 0 to write the cache of {what} ({folder})",
                      flush=True)
                said = True
            polls += 1
            other = _recorded_fingerprint(folder)
            if polls % 10 == 0:  # a whole cache of other files than this rank listed, and nobody writing it ...
                stuck = bool(other) and other != fingerprint and _nobody_writes(lock)
                idle_since = (idle_since or time.monotonic()) if stuck else None
            if idle_since is not None and time.monotonic() - idle_since > STUCK_SECONDS:
                # ... for minutes (local rank 0 lists the files and takes the lock long before): it will never end
                raise UserError(f"local rank {rank} listed other files of {what} than the cache {folder} holds "
                                f"(fingerprint {fingerprint[:12]} against {other[:12]}): the data folder changed "
                                "while the ranks started; run again once it is complete")
            time.sleep(poll_seconds)
        return cached
    cached = read_arrays(folder, fingerprint)  # a whole cache is only read: no lock, no write access needed
    if cached is not None:
        return cached
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock):
            cached = read_arrays(folder, fingerprint)
            if cached is not None:
                return cached
            writer = ArrayWriter(folder)
            started = time.perf_counter()
            try:
                classes = build(writer)
                writer.commit(fingerprint, classes)
            except BaseException:
                writer.abort()
                raise
            print(f"bornagain: wrote the decoded images of {what} to {folder} in {time.perf_counter() - started:.1f} s "
                  "(once: later runs and every process of a node map it)", flush=True)
    except OSError as err:
        raise UserError(f"cannot write the image cache {folder} ({err}): set BORNAGAIN_CACHE_DIR to a writable folder "
                        "with room for the decoded images (n x c x h x w bytes)") from None
    cached = read_arrays(folder, fingerprint)
    if cached is None:  # written a moment ago: only a file changed under us gets here
        raise UserError(f"the image cache {folder} was written but cannot be read back: delete it and run again")
    return cached
