"""The one place that writes files: every write is atomic (tmp, flush, fsync, rename).

A reader never sees half a file: either the old version or the new one. Only
rank 0 of a distributed run calls these (the callers check).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from bornagain_kd.errors import UserError


def user_cache_dir() -> Path:
    """$BORNAGAIN_CACHE_DIR, else $XDG_CACHE_HOME/bornagain, else ~/.cache/bornagain (as the compile record)."""
    base = os.environ.get("BORNAGAIN_CACHE_DIR")
    return Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bornagain"


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path):
    """Hold an exclusive ``flock`` on ``lock_path`` (created) for the block: processes that reach it together take
    turns, and the kernel releases it when a holder dies. No lock where fcntl is missing (not POSIX)."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_name)`` into a temporary file beside it, fsync, then rename.

    A crash at any point leaves the old file (or none), never a partial one, and no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _kill_in_write(path.name)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; run files are as readable as any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


_writes: dict[str, int] = {}


def _kill_in_write(name: str) -> None:
    """Test hook: BORNAGAIN_KILL_IN_WRITE=NAME:K SIGKILLs the process during its K-th write of a file
    called NAME, after the temporary file is complete and before the rename (a kill mid-checkpoint)."""
    spec = os.environ.get("BORNAGAIN_KILL_IN_WRITE")
    if not spec:
        return
    target, _, k = spec.rpartition(":")
    if target != name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(k):
        import signal  # noqa: PLC0415

        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (recursively through dicts, lists and tuples), so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def nan_for_none(metrics: Mapping[str, Any]) -> dict:
    """The inverse of json_safe on one flat dict of metrics: None (a NaN written as strict JSON) becomes NaN."""
    return {k: math.nan if v is None else v for k, v in metrics.items()}


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is corrupt (not valid JSON: {e}); delete it and rerun the stage that writes it") from None


def file_mode() -> int:
    """0666 minus the process umask: the mode an ordinary open() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
