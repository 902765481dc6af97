"""Run logs: ``metrics.jsonl`` (one JSON object per line, always), TensorBoard events and the other trackers of
`train.trackers` (engine/trackers.py), plus progress bars."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from bornagain_kd.engine.trackers import RunTrackers
from bornagain_kd.files import atomic_write_text

T = TypeVar("T")


class RunLogger:
    """Appends metrics to ``run_dir/metrics.jsonl``, TensorBoard (``run_dir/tb``) and the other ``trackers``
    (MLflow, W&B: one tracker run per run directory).

    ``enabled=False`` (non-zero ranks) makes every call a no-op.
    """

    def __init__(self, run_dir: str | Path, *, trackers: tuple[str, ...] = ("tensorboard",), enabled: bool = True,
                 filename: str = "metrics.jsonl"):
        self.enabled = enabled
        self.path = Path(run_dir) / filename
        self._tb = None
        self._tb_dir = Path(run_dir) / "tb"
        self._want_tb = "tensorboard" in trackers and enabled
        self.trackers = RunTrackers(run_dir, trackers, enabled=enabled)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _writer(self):
        if self._tb is None and self._want_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: plain-file logs still work
                self._want_tb = False
                return None
            self._tb = SummaryWriter(log_dir=str(self._tb_dir))
        return self._tb

    def log(self, metrics: dict, *, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._writer()
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    writer.add_scalar(k, v, step)
        self.trackers.log(metrics, step)

    def truncate_after(self, step: int, keep=None) -> None:
        """Drop records logged after ``step`` (an interrupted epoch being redone on resume);
        ``keep(record)``, when given, decides instead."""
        if not self.enabled or not self.path.exists():
            return
        keep = keep or (lambda record: record["step"] <= step)
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if keep(json.loads(line)):
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill
        atomic_write_text(self.path, "".join(l + "\n" for l in kept))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self, status: str = "KILLED") -> None:
        """Close the event files and end the tracker runs: "FINISHED" once results.json is written (its numbers
        and the run's files are logged), "KILLED" (stopped, to be resumed) or "FAILED"."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.enabled:
            self.trackers.close(status)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def bars_shown(enabled: bool) -> bool:
    """Whether progress bars are drawn: asked for (train.progress), not turned off by BORNAGAIN_NO_PROGRESS, and
    stderr a terminal (a log file or a SLURM output would fill with redrawn bars; the epoch lines still print)."""
    return enabled and not os.environ.get("BORNAGAIN_NO_PROGRESS") and stderr_is_terminal()


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True,
             leave: bool = False) -> Iterator[T]:
    """A tqdm bar on stderr where bars_shown(enabled)."""
    if not bars_shown(enabled):
        return iter(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr, dynamic_ncols=True)
