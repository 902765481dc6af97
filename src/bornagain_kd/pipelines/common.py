"""What every pipeline does the same way with the shared training section (config.TrainingConfig)."""

from __future__ import annotations

import functools
import os
import sys

import torch

from bornagain_kd.config import TrainingConfig, config_to_dict
from bornagain_kd.engine.compile import separate_kernel_cache
from bornagain_kd.engine.device import native_bf16, resolve_device
from bornagain_kd.engine.distributed import DistInfo, current, init_distributed
from bornagain_kd.engine.trackers import command_run
from bornagain_kd.engine.averaging import AveragingSettings
from bornagain_kd.engine.trainer import EngineSettings


def start_process(train: TrainingConfig) -> tuple[torch.device, DistInfo]:
    """Threads, device and (under torchrun) the process group, in that order, from `train.*`; first, the kernel
    cache of this CPU kernel setting (engine/compile.py: set before anything asks torch for it, which building
    the fused optimizer already does). Once per command: every run of a command (generations, teachers,
    students) shares its device and thread settings, so a later call with the same ones returns the first's."""
    key = (train.device, train.num_threads)
    if key not in _STARTED or _STARTED[key][1] != current():  # (a command's end left the process group)
        _STARTED[key] = _start_process(train)
    device, dist = _STARTED[key]
    if train.precision == "bf16" and not native_bf16(device) and dist.is_main:
        _warn_once("train.precision=bf16, but this CPU has no bf16 instructions (AVX512-BF16, AMX): bf16 is "
                   "emulated and much slower than fp32 here (about 10x for convolutions); set train.precision=fp32")
    return device, dist


_STARTED: dict[tuple, tuple[torch.device, DistInfo]] = {}


def _start_process(train: TrainingConfig) -> tuple[torch.device, DistInfo]:
    separate_kernel_cache(os.environ)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    device = resolve_device(train.device)
    dist = init_distributed(device.type, train.dist_timeout)
    if device.type == "cuda":
        # CIFAR batches have one shape: cuDNN times its convolution algorithms once per shape and keeps the
        # fastest (benchmarks/bench_flops.py --cudnn-benchmark off on measures what it saves)
        torch.backends.cudnn.benchmark = True
    return device, dist


@functools.cache
def _warn_once(text: str) -> None:
    print(f"bornagain: warning: {text}", file=sys.stderr, flush=True)


def engine_settings(train: TrainingConfig, device: torch.device, *, seed: int, max_grad_norm: float = 0.0,
                    log_every_steps: int = 0) -> EngineSettings:
    """The engine's settings of one run: the shared section plus what the pipeline decides (seed, clipping,
    step records)."""
    return EngineSettings(device=device, precision=train.precision, seed=seed, max_grad_norm=max_grad_norm,
                          checkpoint_every_steps=train.checkpoint_every_steps, log_every_steps=log_every_steps,
                          progress=train.progress, trackers=train.trackers, compile=train.compile,
                          compile_mode=train.compile_mode, sync_batchnorm=train.sync_batchnorm,
                          averaging=AveragingSettings(train.weight_averaging, train.ema_decay, train.ema_every_steps,
                                                      train.ema_warmup_power))


def tracked(cfg, output, *, main: bool, artifacts: tuple[str, ...] = ("*",)):
    """The command's tracker run (engine/trackers.py) around its work in ``output``: the training runs inside nest
    under it, and it logs the command's config, results.json and the files matching ``artifacts`` (tables,
    plots) at the end. A no-op unless `train.trackers` names mlflow or wandb, and off rank 0."""
    return command_run(output, cfg.train.trackers, params=config_to_dict(cfg), enabled=main, artifacts=artifacts)
