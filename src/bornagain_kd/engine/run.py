"""The life of a run directory, owned here for every pipeline: create or reopen it, hold its lock, check the
settings it was made with, tell whether it is finished, record its config.

Two levels, one set of rules:

- the **command's output directory** (``command_dir``, ``record_command``): locked for the command's whole life (one process
  per directory); for the vision commands (``check_command_dir``, on every rank before any writes) a used
  directory needs ``--resume`` and ``--resume`` needs a used one, and its settings must match its record;
- each **trained run** inside it (``open_run``: a BAN generation, a baseline, a GLUE teacher, a BAM student):
  finished (``results.json``, written last) -> reused, never retrained; interrupted (a checkpoint) -> continued
  with ``--resume``, refused without; otherwise new. A run's settings are checked against its record
  whenever it is reopened.

Every run records what defines it in one file, ``settings.json``: ``{"format": 1, "kind": ..., "settings":
{...}}``, a nested tree compared key by key (engine/settings.py); the keys that may differ on an occasion are
declared on the config fields (config.may_differ) and passed in as ``ignore``. Directories made before that file
existed are still read: their ``teacher_settings.json``, ``student_settings.json`` or ``config.yaml`` is the
record. ``config.yaml`` (the resolved config, to read or rerun) is written beside it where the run has one.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import yaml

import torch

from bornagain_kd.engine.distributed import all_reduce_tensor, barrier, current, decided_by_rank0
from bornagain_kd.engine.lock import run_lock
from bornagain_kd.engine.settings import refuse_changed
from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, read_json, write_json

RESULTS = "results.json"
CHECKPOINT = "checkpoint.safetensors"
SETTINGS = "settings.json"
CONFIG = "config.yaml"
FORMAT = 1
LEGACY_SETTINGS = ("teacher_settings.json", "student_settings.json", CONFIG)
"""Where a run made before settings.json kept its record (GLUE teacher, BAM student, vision run)."""

State = Literal["new", "resume", "finished"]


@dataclass(frozen=True)
class RunSettings:
    """What defines a run, and how its record is compared (engine/settings.py)."""

    kind: str
    """"vision", "glue-teacher", "bam-student": what made the run (written into the record)."""
    tree: dict
    """The nested settings that define the run: a config tree, plus the run's own identity (task, arm, seed)."""
    ignore: tuple[str, ...] = ()
    """Dotted key prefixes that may differ on this occasion (config.keys_that_may_differ)."""
    added: Mapping[str, Any] = field(default_factory=dict)
    """Keys added since older records were made, with the values in force then (config ADDED_KEYS)."""
    renamed: Mapping[str, str] = field(default_factory=dict)
    """Old dotted names -> new ones (config RENAMED_KEYS)."""


def is_finished(run_dir: str | Path) -> bool:
    """results.json is written last: the one "finished" marker."""
    return (Path(run_dir) / RESULTS).is_file()


def finished_results(run_dir: str | Path) -> dict | None:
    """results.json of a finished run (never retrained), else None."""
    return read_json(Path(run_dir) / RESULTS) if is_finished(run_dir) else None


def reuse_finished(run_dir: str | Path, *, main: bool) -> dict:
    """results.json of a finished run met on --resume, saying so (rank 0): it is read back, never retrained."""
    if main:
        print(f"bornagain: {run_dir} is finished: reused, not retrained", flush=True)
    return finished_results(run_dir)


def recorded_settings(run_dir: str | Path) -> dict | None:
    """The settings tree a run recorded (settings.json, else the record of an older run), or None."""
    run_dir = Path(run_dir)
    if (run_dir / SETTINGS).is_file():
        record = read_json(run_dir / SETTINGS)
        if not isinstance(record, dict) or record.get("format") != FORMAT or "settings" not in record:
            raise UserError(f"'{run_dir / SETTINGS}' is not a bornagain settings record (format {FORMAT}): "
                            "it was edited or written by another tool; choose another --output")
        return record["settings"]
    for name in LEGACY_SETTINGS:
        if (run_dir / name).is_file():
            return _read_legacy(run_dir / name)
    return None


def _read_legacy(path: Path) -> dict:
    if path.suffix == ".json":
        return read_json(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"'{path}' cannot be read ({e}); choose another --output") from None
    return tree if isinstance(tree, dict) else {}


def record_settings(run_dir: str | Path, settings: RunSettings, config: dict | None = None) -> None:
    """(Over)write the run's settings.json and, given ``config`` (a config as a tree: config.config_to_dict),
    its config.yaml (a fresh start)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / SETTINGS, {"format": FORMAT, "kind": settings.kind, "settings": settings.tree})
    if config is not None:
        atomic_write_text(run_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))


def check_settings(run_dir: str | Path, settings: RunSettings) -> None:
    """Refuse a run whose record differs from ``settings`` outside ``settings.ignore`` (one message naming
    every changed key with both values); a run with no record passes."""
    saved = recorded_settings(run_dir)
    if saved is not None:
        refuse_changed(saved, settings.tree, Path(run_dir), ignore=settings.ignore,
                       renamed=dict(settings.renamed), added=dict(settings.added))


def open_run(run_dir: str | Path, settings: RunSettings, *, resume: bool, main: bool, what: str = "run",
             config: dict | None = None) -> State:
    """Reopen or create one trained run's directory and say what to do with it: "finished" (reuse it),
    "resume" (continue from its checkpoint; refused without ``resume``) or "new" (its settings and config
    recorded now, on rank 0). The settings of a run reopened are checked first."""
    run_dir = Path(run_dir)

    def decide() -> State:
        if is_finished(run_dir) or (run_dir / CHECKPOINT).is_file():
            check_settings(run_dir, settings)
            if is_finished(run_dir):
                return "finished"
            if not resume:
                raise UserError(f"'{run_dir}' holds an unfinished {what}: pass --resume to continue it, "
                                "or choose another --output")
            return "resume"
        return "new"

    state = decided_by_rank0(decide)  # read by the rank that writes the files: every rank takes the same path
    if state == "new" and main:  # a fresh start: whatever an earlier, unstarted attempt recorded is replaced
        record_settings(run_dir, settings, config)
    return state


SHARED_MARKER = ".rank0-"
"""check_shared_storage's marker file: this prefix and a random token, in the output directory for a moment."""


def check_shared_storage(output: Path) -> None:
    """Under torchrun, refuse an output directory that some rank cannot see as rank 0 writes it (several nodes
    without shared storage): every rank reads rank 0's decisions and files back from it, so such a run would take
    different paths on different nodes and hang. Rank 0 writes a marker with a random token, every rank looks
    for it, all agree on the count that could not, and the marker (and a directory made only for it) goes again.
    A no-op in one process."""
    if not current().enabled:
        return
    output = Path(output)

    def write() -> tuple[str, bool, str]:
        created = not output.exists()
        output.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        (output / f"{SHARED_MARKER}{token}").write_text(token)
        return token, created, str(output)

    token, created, where = decided_by_rank0(write)  # (where: rank 0's path, named alike in every rank's error)
    marker = output / f"{SHARED_MARKER}{token}"
    try:
        seen = marker.is_file() and marker.read_text() == token
    except OSError:
        seen = False
    blind = int(all_reduce_tensor(torch.tensor(0 if seen else 1, dtype=torch.long)))  # every rank has looked
    if current().is_main:
        marker.unlink(missing_ok=True)
        if created:
            output.rmdir()
    barrier()  # the marker is gone before any rank looks at the folder again (a used folder needs --resume)
    if blind:
        raise UserError(f"{blind} of the {current().world_size} processes cannot see the output directory {where} "
                        "as rank 0 writes it: under torchrun on several nodes it must be on storage every node "
                        "shares (a network file system); give --output a folder there")


@contextlib.contextmanager
def command_dir(output: str | Path, *, main: bool) -> Iterator[Path]:
    """The command's output directory, locked for the command's whole life (one process per directory; a command
    refused before it wrote anything leaves no directory behind). ``check_command_dir`` comes first, on every
    rank; ``record_command`` once the command's own checks have passed."""
    output = Path(output)
    with run_lock(output, enabled=main):
        yield output


def record_command(output: Path, settings: RunSettings, config: dict, *, main: bool) -> None:
    """Rank 0 records the command's settings (when the directory has no record yet: the record stays what the
    run was made with) and ``config`` (the config as a tree) as config.yaml, the config it last ran with."""
    if not main:
        return
    if recorded_settings(output) is None:
        record_settings(output, settings)
    atomic_write_text(output / CONFIG, yaml.safe_dump(config, sort_keys=False))


def check_command_dir(output: Path, settings: RunSettings, *, resume: bool) -> None:
    """Refuse to mix runs, before anything is written: a used directory needs --resume, and --resume needs
    the settings it was made with."""
    if not output.exists() or not any(output.iterdir()):
        if resume:
            raise UserError(f"--resume: '{output}' holds no run to resume; drop --resume to start one")
        return
    if not resume:
        raise UserError(f"output directory '{output}' is not empty: pass --resume to continue that run, "
                        "or choose another --output")
    check_settings(output, settings)
