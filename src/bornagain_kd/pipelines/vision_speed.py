"""`auto` speed settings of an image run resolved (engine/speed.py holds the rules): the config a run records, and
the reasons it prints and keeps in results.json["speed"]."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from bornagain_kd.engine.compile import compile_unavailable
from bornagain_kd.engine.device import resolve_device
from bornagain_kd.engine.distributed import all_gather_objects
from bornagain_kd.engine.run import recorded_settings
from bornagain_kd.engine.settings import recorded as with_added_keys
from bornagain_kd.engine.speed import (AUTO, Choice, add_measurement, compile_key, decide_compile,
                                    decide_teacher_compile, read_record, record_path, resolve_channels_last,
                                    resolve_precision, resolve_teacher_precision)
from bornagain_kd.errors import UserError
from bornagain_kd.vision.config import VisionConfig


def recorded_keys(run_dir: Path) -> dict:
    """The dotted keys a run directory recorded (engine/run.py), keys added since with their values of then
    (VisionConfig.ADDED_KEYS); {} for none or an unreadable record (the settings check reports that)."""
    try:
        tree = recorded_settings(run_dir)
    except UserError:
        return {}
    return with_added_keys(tree, VisionConfig.ADDED_KEYS) if isinstance(tree, dict) else {}


def resolve_vision_speed(cfg: VisionConfig, run_dir: Path) -> tuple[VisionConfig, dict[str, Choice]]:
    """``cfg`` with ``auto`` precision, channels_last and teacher precision resolved (the values ``run_dir``
    recorded, where it has a config.yaml: a run keeps what it started with on any machine), and each choice with
    its reason. ``train.compile`` stays as given: it is decided per run, from the run's length (``decide``)."""
    recorded = recorded_keys(run_dir)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device, recorded.get("train.precision"))
    # every image model here is convolutional (an imported model without convolutions is unaffected: only
    # 4-d tensors change layout)
    layout = resolve_channels_last(cfg.train.channels_last, convolutional=True,
                                   recorded=recorded.get("train.channels_last"))
    teacher = resolve_teacher_precision(cfg.ban.teacher_precision, device, recorded.get("ban.teacher_precision"))
    last_batch = resolve_last_batch(cfg.train.last_batch, recorded.get("train.last_batch"))
    train = dataclasses.replace(cfg.train, precision=precision.value, channels_last=layout.value,
                                last_batch=last_batch.value)
    ban = dataclasses.replace(cfg.ban, teacher_precision=teacher.value)
    choices = {"precision": precision, "channels_last": layout, "last_batch": last_batch}
    if cfg.ban.teacher_precision is not None:
        choices["teacher_precision"] = teacher
    return dataclasses.replace(cfg, train=train, ban=ban), choices


def keep_explicit_compile(cfg: VisionConfig, output: Path) -> VisionConfig:
    """``cfg`` for ``--resume`` of a sequence in ``output``: an ``auto`` train.compile or ban.teacher_compile takes
    the explicit value the sequence was started with, so its runs not begun yet compile as its first ones did (each
    run that began keeps its own recorded choice in any case)."""
    recorded = recorded_keys(output)
    train, ban = cfg.train, cfg.ban
    if train.compile == AUTO and isinstance(recorded.get("train.compile"), bool):
        train = dataclasses.replace(train, compile=recorded["train.compile"])
    if ban.teacher_compile == AUTO and isinstance(recorded.get("ban.teacher_compile"), bool):
        ban = dataclasses.replace(ban, teacher_compile=recorded["ban.teacher_compile"])
    return dataclasses.replace(cfg, train=train, ban=ban)


def resolve_last_batch(value: str, recorded: str | None) -> Choice:
    """train.last_batch: an explicit value wins; ``auto`` takes the value the run recorded (a run made before the
    key: short), else fill: every batch one shape, so a compiled step compiles once. A recorded ``auto`` (written
    by a tool that did not resolve it) counts as not recorded."""
    if value != AUTO:
        return Choice(value, "set", "set")
    if recorded in ("fill", "drop", "short"):
        return Choice(recorded, "recorded when the run started", "recorded")
    return Choice("fill", "one batch shape: a compiled step compiles once", AUTO)


def run_compile_key(cfg: VisionConfig, shape: tuple[int, ...], teacher: torch.nn.Module | None,
                    device: torch.device) -> str:
    """The record's key of one image run: model, teacher, input batch (b, c, h, w), precision, layout, compile
    mode, device."""
    return compile_key(cfg.model.name, teacher=None if teacher is None else type(teacher).__name__,
                       shape=(min(cfg.train.batch_size, shape[0]), *shape[1:]), precision=cfg.train.precision,
                       channels_last=bool(cfg.train.channels_last), device=device, mode=cfg.train.compile_mode)


def teacher_compile_key(cfg: VisionConfig, shape: tuple[int, ...], teacher: torch.nn.Module,
                        device: torch.device, *, name: str | None = None) -> str:
    """The record's key of a frozen teacher's forward pass: its model ``name`` (a teacher may be of another
    architecture than the student), class (folded or not) and size, the input batch, its precision
    (ban.teacher_precision, else the students'), layout, compile mode, device."""
    size = sum(p.numel() for p in teacher.parameters())
    described = f"{name or 'teacher'} ({type(teacher).__name__}, {size} parameters)"
    return compile_key(described, teacher="frozen forward",
                       shape=(min(cfg.train.batch_size, shape[0]), *shape[1:]),
                       precision=cfg.ban.teacher_precision or cfg.train.precision,
                       channels_last=bool(cfg.train.channels_last), device=device, mode=cfg.train.compile_mode)


def decide_teacher(cfg: VisionConfig, key: str, steps: int, device: torch.device, student: Choice, *,
                   recorded=None, share: Callable[[Choice], list] = all_gather_objects) -> Choice:
    """ban.teacher_compile of one run (engine.speed.decide_teacher_compile), rank 0's for every rank."""
    choice = decide_teacher_compile(cfg.ban.teacher_compile, student=student, steps=steps,
                                    entry=read_record(record_path(), key), device=device, recorded=recorded)
    return share(choice if student.value else _unless_unavailable(choice))[0]


def remember_teacher(key: str, timing: dict) -> None:
    """The frozen teacher's forward seconds per step (``timing`` from the task: calls, seconds, and the first
    call's seconds where it compiled) into the machine's record."""
    calls, seconds = timing.get("calls", 0), timing.get("seconds", 0.0)
    if timing.get("compiled"):  # the first call compiled: its time is the compile time
        first = timing.get("first_seconds", 0.0)
        add_measurement(record_path(), key, steps=calls - 1, train_seconds=seconds - first, compile_seconds=first)
    else:
        add_measurement(record_path(), key, steps=calls, train_seconds=seconds, compile_seconds=None)


def decide(cfg: VisionConfig, key: str, steps: int, device: torch.device, *, recorded=None,
           share: Callable[[Choice], list] = all_gather_objects) -> Choice:
    """train.compile of one run of ``steps`` steps: ``auto`` takes the value the run ``recorded`` when it started
    (a resumed run keeps eager or compiled, so it stays the uninterrupted run), else decides from the record at
    engine.speed.record_path. Rank 0's decision is every rank's (``share``: every rank's choice in rank order;
    ranks on other nodes read other records, and rank 0 updates its record after the other ranks read theirs)."""
    return share(_decide_here(cfg, key, steps, device, recorded))[0]


def _decide_here(cfg: VisionConfig, key: str, steps: int, device: torch.device, recorded) -> Choice:
    if cfg.train.compile == AUTO and isinstance(recorded, bool):
        return Choice(recorded, "recorded when the run started", "recorded")
    choice = decide_compile(cfg.train.compile, steps=steps, entry=read_record(record_path(), key), device=device)
    return _unless_unavailable(choice)


def _unless_unavailable(choice: Choice) -> Choice:
    """An ``auto`` decision to compile, or eager where this machine cannot compile (probed only then)."""
    if choice.how == AUTO and choice.value and compile_unavailable() is not None:
        return Choice(False, f"torch.compile cannot run here ({compile_unavailable()})", AUTO)
    return choice


def decide_compiling(cfg: VisionConfig, shape: tuple[int, ...], teacher: torch.nn.Module | None,
                     device: torch.device, steps: int, *, teacher_name: str | None = None,
                     recorded: dict | None = None) -> tuple[VisionConfig, dict[str, Choice], dict[str, str]]:
    """train.compile and, with a frozen ``teacher``, ban.teacher_compile of one run of ``steps`` steps on training
    images of ``shape`` (``recorded``: the run's recorded keys, on --resume): (``cfg`` with both decided, the
    choices, and the machine record's key of each)."""
    recorded = recorded or {}
    keys = {"compile": run_compile_key(cfg, shape, teacher, device)}
    choices = {"compile": decide(cfg, keys["compile"], steps, device, recorded=recorded.get("train.compile"))}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=choices["compile"].value))
    if teacher is not None:
        keys["teacher_compile"] = teacher_compile_key(cfg, shape, teacher, device, name=teacher_name)
        choices["teacher_compile"] = decide_teacher(cfg, keys["teacher_compile"], steps, device, choices["compile"],
                                                    recorded=recorded.get("ban.teacher_compile"))
        cfg = dataclasses.replace(cfg, ban=dataclasses.replace(cfg.ban, teacher_compile=choices["teacher_compile"].value))
    return cfg, choices, keys


def remember(key: str, steps: int, results: dict) -> None:
    """This run's step time (and compile seconds, where it compiled) into the machine's record."""
    add_measurement(record_path(), key, steps=steps, train_seconds=results.get("train_seconds", 0.0),
                    compile_seconds=results.get("compile_seconds"))
