"""One process per run directory: an advisory lock that a killed process cannot leave stuck.

``fcntl.flock`` belongs to the open file, so the kernel releases it when the holder exits for
any reason (SIGKILL included); the lock file itself may stay behind and means nothing alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bornagain_kd.errors import UserError

LOCK = ".lock"


@contextlib.contextmanager
def run_lock(directory: str | Path, *, enabled: bool = True):
    """Hold ``directory/.lock`` for the duration; a second process is refused with a clear error."""
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"'{directory}' is in use by process {holder}: wait for it to finish (or stop it), "
                            "or choose another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
        if created and [p.name for p in directory.iterdir()] == [LOCK]:
            # a run refused before it wrote anything leaves nothing behind, not even this folder
            (directory / LOCK).unlink(missing_ok=True)
            try:
                directory.rmdir()
            except OSError:
                pass
