"""The Python API: each command of the CLI as a function that returns its results.

    from bornagain_kd.api import run_ban
    results = run_ban("configs/ban-cifar10-cpu.yaml", overrides=["ban.generations=3"], output="runs/mine")
    results = run_ban({"model": {"name": "nets.py:build_net", "kwargs": {"width": 32}},
                       "data": {"name": "tensors", "root": "data.npz"}}, output="runs/mine")

``config`` is a YAML recipe's path, a nested dict of the same keys, a config object
(`VisionConfig`, `GlueExperimentConfig`) or None (the defaults); ``overrides`` are ``key=value``
strings as on the command line. Every function runs exactly what its command runs (the same checks,
run directory, resume and tables), prints nothing but progress and warnings, and raises
`bornagain_kd.errors.UserError` (a ValueError) with the command's one-line message on bad input.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from bornagain_kd.config import config_from_tree, config_to_dict, load_config
from bornagain_kd.errors import UserError

T = TypeVar("T")
ConfigLike = str | os.PathLike | dict | Any | None


def _resolve(cls: type[T], config: ConfigLike, overrides: Sequence[str]) -> T:
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(cls, config, overrides)
    if isinstance(config, dict):
        return config_from_tree(cls, config, overrides)
    if isinstance(config, cls):
        return config_from_tree(cls, config_to_dict(config), overrides)  # overrides checked like the CLI's
    raise TypeError(f"config must be a YAML path, a dict, a {cls.__name__} or None, not {type(config).__name__}")


def vision_config(config: ConfigLike = None, overrides: Sequence[str] = (), output: str | os.PathLike | None = None):
    """The `VisionConfig` of a `ban` / `train` run (``output`` replaces its output_dir)."""
    from bornagain_kd.vision.config import VisionConfig  # noqa: PLC0415

    cfg = _resolve(VisionConfig, config, overrides)
    return dataclasses.replace(cfg, output_dir=str(output)) if output is not None else cfg


def start_vision_run(cfg, *, resume: bool):
    """(output directory, process info) after the checks every vision run makes before writing: under
    torchrun every rank checks before any rank writes, then they meet."""
    from bornagain_kd.engine.device import resolve_device  # noqa: PLC0415
    from bornagain_kd.engine.distributed import barrier, init_distributed, per_rank_batch  # noqa: PLC0415
    from bornagain_kd.engine.run import check_shared_storage  # noqa: PLC0415
    from bornagain_kd.pipelines.ban import check_output_dir  # noqa: PLC0415

    from bornagain_kd.engine.trackers import check_available  # noqa: PLC0415

    check_available(cfg.train.trackers)  # a tracker whose library is missing: refused before anything is written
    output = Path(cfg.output_dir)
    device = resolve_device(cfg.train.device)
    info = init_distributed(device.type, cfg.train.dist_timeout)
    per_rank_batch(cfg.train.batch_size, info, "train.batch_size")  # a batch too small for the world: refused now
    if cfg.train.sync_batchnorm and info.enabled and device.type != "cuda":
        raise UserError("train.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm runs only there); "
                        "processes on CPUs normalise over their own slice: drop the key, or raise train.batch_size")
    check_shared_storage(output)  # several nodes: every rank must see what rank 0 writes there
    check_output_dir(output, cfg, resume=resume)
    barrier()
    return output, info


def run_ban(config: ConfigLike = None, *, overrides: Sequence[str] = (), output: str | os.PathLike | None = None,
            resume: bool = False) -> dict:
    """`bornagain ban`: the teacher, its born-again generations, ensembles and tables; returns results.json."""
    from bornagain_kd.pipelines import ban  # noqa: PLC0415

    cfg = vision_config(config, overrides, output)
    out, _ = start_vision_run(cfg, resume=resume)
    return ban.run_ban(cfg, out, resume=resume)


def train(config: ConfigLike = None, *, overrides: Sequence[str] = (), output: str | os.PathLike | None = None,
          resume: bool = False) -> dict:
    """`bornagain train`: one classifier trained from its labels; returns its results.json."""
    from bornagain_kd.pipelines import ban  # noqa: PLC0415

    cfg = vision_config(config, overrides, output)
    out, _ = start_vision_run(cfg, resume=resume)
    return ban.run_train(cfg, out, resume=resume)


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """`bornagain export`: a finished `train` run or `ban` generation as a folder to share (model.safetensors,
    config.json, README.md model card), reusable as ban.teacher_run; returns its config.json."""
    from bornagain_kd.pipelines.export import export_run  # noqa: PLC0415

    return export_run(run_dir, out_dir)


def load_exported(folder: str | os.PathLike):
    """(model in eval mode with its weights, config.json) of a folder `bornagain export` wrote."""
    from bornagain_kd.pipelines.export import load_exported as load  # noqa: PLC0415

    return load(folder)


def glue_config(config: ConfigLike = None, overrides: Sequence[str] = ()):
    """The `GlueExperimentConfig` of a `glue-teachers` / `bam` run, checked before anything is written."""
    from bornagain_kd.glue.config import GlueExperimentConfig  # noqa: PLC0415
    from bornagain_kd.pipelines.glue_teachers import preflight  # noqa: PLC0415

    from bornagain_kd.engine.trackers import check_available  # noqa: PLC0415

    cfg = _resolve(GlueExperimentConfig, config, overrides)
    check_available(cfg.train.trackers)
    preflight(cfg)  # a wrong path or name fails here, before any file is written
    return cfg


def glue_teachers(config: ConfigLike = None, *, overrides: Sequence[str] = (),
                  output: str | os.PathLike | None = None, resume: bool = False) -> dict:
    """`bornagain glue-teachers`: one single-task teacher per task with cached predictions; returns the
    summary (teachers/summary.json) with each teacher's run under "teachers"."""
    from bornagain_kd.pipelines import glue_teachers as pipeline  # noqa: PLC0415

    cfg = glue_config(config, overrides)
    runs, summary = pipeline.run(cfg, Path(output or cfg.output_dir), resume=resume)
    return {**summary, "teachers": runs}


def bam(config: ConfigLike = None, *, overrides: Sequence[str] = (), output: str | os.PathLike | None = None,
        resume: bool = False) -> dict:
    """`bornagain bam`: teachers, multi-task students of every arm and seed, paired tests; returns results.json."""
    from bornagain_kd.pipelines import bam as pipeline  # noqa: PLC0415

    cfg = glue_config(config, overrides)
    return pipeline.run(cfg, Path(output or cfg.output_dir), resume=resume)
