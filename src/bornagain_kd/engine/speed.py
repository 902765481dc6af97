"""`auto` for the speed levers (precision, channels_last, compile): what is fastest on this hardware for this run.

Each lever is decided by one rule, and every decision carries its reason, so a run can say what it chose:

    precision       bf16 where it is native (a CUDA GPU with bf16; a CPU whose flags list bf16 instructions,
                    engine.device.native_bf16), fp32 elsewhere. It changes what a run learns, so the resolved value
                    is what the run records, and a run that recorded one keeps it (resumed on another machine too).
    channels_last   on for convolutional image models (NHWC convolutions are faster in oneDNN and cuDNN).
    compile         on where the run is long enough to pay the compilation back, decided from this machine's own
                    record of measured compile seconds and step times (record_path below), else eager.
    teacher compile a frozen BAN teacher's forward pass, compiled with frozen weights: with a compiled student, and
                    on its own (from its own measurements) where the student stays eager.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from bornagain_kd.engine import device as device_info
from bornagain_kd.files import read_json, write_json

AUTO = "auto"
STUDENT = "student"  # ban.teacher_compile: compiled as the student is (no frozen weights), as runs before the key
PRIOR_COMPILE_SECONDS = {"cpu": 60.0, "cuda": 120.0}
"""Compile seconds assumed before this machine has measured any for a model (cold caches: ResNet-20 on 2 CPU
cores took 40 s, DenseNet-BC-80-80 on an H100 minutes); high on purpose."""
PRIOR_TEACHER_COMPILE_SECONDS = {"cpu": 30.0, "cuda": 60.0}
"""The same for a frozen teacher's forward pass alone (no backward to compile; cold caches on 2 CPU cores:
ResNet-20 13 s, WRN-16-4 15 s, DenseNet-BC-40-12 30 s)."""
PRIOR_SAVING = 0.15
"""Share of an eager step assumed saved by compiling before a compiled run was measured (low on purpose: measured
savings were 0.07-0.45)."""
PAYBACK = 1.5
"""Compile only where the expected saving is this many times the compile seconds."""


@dataclass(frozen=True)
class Choice:
    """One lever's resolved value and why (``how``: 'set' explicitly, 'recorded' by this run, or 'auto')."""

    value: object
    reason: str
    how: str

    def as_dict(self) -> dict:
        return {"value": self.value, "reason": self.reason, "how": self.how}


def bf16_reason(device: torch.device) -> tuple[bool, str]:
    """(bf16 is native here, why), asked of engine.device.native_bf16 (the one hardware query)."""
    native = device_info.native_bf16(device)
    where = "GPU" if device.type == "cuda" else "CPU"
    if native:
        return True, f"native bf16 on this {where}"
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    limit = f", ATEN_CPU_CAPABILITY={capability}" if capability else ""
    return False, f"no native bf16 on this {where}{limit}: bf16 would be emulated"


def resolve_precision(value: str, device: torch.device, recorded: str | None = None) -> Choice:
    """train.precision: an explicit value wins; ``auto`` takes the value this run recorded, else bf16 where native."""
    if value != AUTO:
        return Choice(value, "set", "set")
    if recorded in ("fp32", "bf16"):
        return Choice(recorded, "recorded when the run started", "recorded")
    native, why = bf16_reason(device)
    return Choice("bf16" if native else "fp32", why, AUTO)


def resolve_teacher_precision(value: str | None, device: torch.device, recorded: str | None = None) -> Choice:
    """ban.teacher_precision: null follows the students; ``auto`` is bf16 where native even for an fp32 student
    (the frozen teacher only predicts; its targets move by bf16 rounding)."""
    if value is None:
        return Choice(None, "the students' precision", "set")
    return resolve_precision(value, device, recorded)


def resolve_channels_last(value, *, convolutional: bool, recorded: bool | None = None) -> Choice:
    """train.channels_last: an explicit value wins; ``auto`` is on for convolutional models."""
    if value != AUTO:
        return Choice(bool(value), "set", "set")
    if isinstance(recorded, bool):
        return Choice(recorded, "recorded when the run started", "recorded")
    if convolutional:
        return Choice(True, "convolutional model", AUTO)
    return Choice(False, "no convolutions", AUTO)


def record_path() -> Path:
    """The per-machine record of compile measurements: $BORNAGAIN_CACHE_DIR, else $XDG_CACHE_HOME/bornagain,
    else ~/.cache/bornagain; the file compile_record.json."""
    base = os.environ.get("BORNAGAIN_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bornagain")
    return Path(base) / "compile_record.json"


def compile_key(model: str, *, teacher: str | None, shape: tuple[int, ...], precision: str, channels_last: bool,
                device: torch.device, mode: str = "default") -> str:
    """What a compile measurement depends on: the model (and a frozen teacher compiled beside it), the input batch
    (b, c, h, w), precision, layout, the compile mode (train.compile_mode: max-autotune compiles far longer), this
    device (and CPU kernel setting) and this torch."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"cpu {torch.backends.cpu.get_cpu_capability()} x{torch.get_num_threads()}"
    return (f"{model} | teacher {teacher or '-'} | {'x'.join(map(str, shape))} | {precision} | "
            f"{'channels_last' if channels_last else 'nchw'} | mode {mode} | {where} | torch {torch.__version__}")


def record_lock(path: Path) -> FileLock:
    """The lock every update of the record at ``path`` holds (``path``.lock): tasks of a SLURM job share $HOME,
    and an unlocked read-modify-write loses the measurements of whichever task wrote first."""
    return FileLock(f"{path}.lock", timeout=60)


def read_record(path: Path, key: str) -> dict:
    """This key's measurements ({} before any): eager_step_seconds, compiled_step_seconds, compile_seconds."""
    try:
        return read_json(path).get(key, {}) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # an unreadable record only costs a conservative decision


def add_measurement(path: Path, key: str, *, steps: int, train_seconds: float,
                    compile_seconds: float | None) -> None:
    """Keep one finished run's measurement (compiled where ``compile_seconds`` is given): the fastest step time
    seen (a machine busy with other work only ever slows a step), the latest compile seconds (PyTorch's own
    on-disk kernel cache makes a repeated compilation of the same key much cheaper)."""
    if steps < 1 or train_seconds <= 0:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with record_lock(path):  # read, merge and write (atomically: a reader never sees half a file) as one
            _merge_measurement(path, key, train_seconds / steps, compile_seconds)
    except (OSError, Timeout):
        pass  # a read-only home or a stuck lock: decisions stay conservative


def _merge_measurement(path: Path, key: str, step_seconds: float, compile_seconds: float | None) -> None:
    try:
        record = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    entry = dict(record.get(key, {}))
    field = "eager_step_seconds" if compile_seconds is None else "compiled_step_seconds"
    entry[field] = min(step_seconds, entry.get(field, float("inf")))
    if compile_seconds is not None:
        entry["compile_seconds"] = compile_seconds
    record[key] = entry
    write_json(path, record)


def decide_compile(value, *, steps: int, entry: dict, device: torch.device, available: bool = True,
                   prior_seconds: dict[str, float] = PRIOR_COMPILE_SECONDS) -> Choice:
    """train.compile: an explicit value wins; ``auto`` compiles where ``steps`` steps save ``PAYBACK`` times the
    compile seconds: saving = steps x (eager step - compiled step), from this machine's measurements of this key
    (``entry``), with the priors standing in for what is not measured yet."""
    if value != AUTO:
        return Choice(bool(value), "set", "set")
    if not available:
        return Choice(False, "torch.compile cannot run here", AUTO)
    eager = entry.get("eager_step_seconds")
    if eager is None:
        return Choice(False, "no step time measured here yet for this model with this teacher (this run measures "
                             "one)", AUTO)
    compiled = entry.get("compiled_step_seconds", eager * (1 - PRIOR_SAVING))
    cost = entry.get("compile_seconds", prior_seconds.get(device.type, 120.0))
    saving = steps * (eager - compiled)
    measured = "measured" if "compile_seconds" in entry else "assumed"
    gain = f"saves ~{_duration(saving)}" if saving > 0 else "compiled steps were not faster here"
    text = f"~{cost:.0f} s to compile ({measured}), {gain} over {steps} steps"
    return Choice(saving >= PAYBACK * cost, text, AUTO)


def decide_teacher_compile(value, *, student: Choice, steps: int, entry: dict, device: torch.device,
                           recorded=None) -> Choice:
    """ban.teacher_compile, the frozen teacher's forward pass compiled (with frozen weights) or eager: an explicit
    value wins; ``auto`` keeps what the run ``recorded`` when it started, compiles with a compiled student, stays
    eager where train.compile=false was set, and otherwise decides as decide_compile does from this machine's
    measurements of the teacher's forward pass (``entry``: its eager and compiled seconds per step): a student too
    short-lived to pay back its own compilation may still pay back the teacher's, which compiles faster."""
    if value == STUDENT or (value == AUTO and recorded == STUDENT):
        return Choice(STUDENT, "a plain compile where the student compiles" if value == STUDENT else
                      "as the student, with no frozen weights: recorded before ban.teacher_compile existed",
                      "set" if value == STUDENT else "recorded")
    if value != AUTO:
        return Choice(bool(value), "set", "set")
    if isinstance(recorded, bool):
        return Choice(recorded, "recorded when the run started", "recorded")
    if student.value:
        return Choice(True, "compiled with the student", AUTO)
    if student.how == "set":
        return Choice(False, "train.compile=false", AUTO)
    if student.how == "recorded":  # a run started before the teacher was decided apart: it ran as the student
        return Choice(False, "as the student, recorded when the run started", "recorded")
    if entry.get("eager_step_seconds") is None:
        if device.type != "cpu":  # timing a forward pass on a GPU would cost a host synchronisation per step
            return Choice(False, "with a compiled student only on a GPU (the teacher's forward is timed on a CPU)",
                          AUTO)
        return Choice(False, "no forward time of this teacher measured here yet (this run measures one)", AUTO)
    return decide_compile(AUTO, steps=steps, entry=entry, device=device, prior_seconds=PRIOR_TEACHER_COMPILE_SECONDS)


def _duration(seconds: float) -> str:
    if seconds < 0:
        return f"-{_duration(-seconds)}"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def speed_line(choices: dict[str, Choice]) -> str:
    """'speed: bf16 (native bf16 on this CPU), channels_last (convolutional model), eager (...)'."""
    parts = []
    for name, c in choices.items():
        if name == "precision":
            shown = str(c.value)
        elif name == "teacher_precision":
            if c.value is None:
                continue
            shown = f"teacher {c.value}"
        elif name == "last_batch":
            shown = f"last batch {c.value}"
        elif name == "compile":
            shown = {True: "compile", False: "eager", None: "compile or eager"}[c.value]
        elif name == "teacher_compile":
            shown = {STUDENT: "teacher as the student"}.get(c.value, "teacher compiled" if c.value else "teacher eager")
        else:
            shown = name if c.value else f"no {name}"
        parts.append(f"{shown} ({c.reason})")
    return "speed: " + ", ".join(parts)
