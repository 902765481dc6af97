"""Device and precision: passed in explicitly, never global."""

from __future__ import annotations

import contextlib
import os

import torch

from bornagain_kd.errors import UserError


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; "cuda" without a GPU is a UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu or auto")
        if name == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device(name)
    raise UserError(f"train.device={name!r} is not one of auto, cpu, cuda")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA; fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise UserError(f"train.precision={precision!r} is not one of fp32, bf16")


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags of bf16 instructions: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 ("Features: ... bf16")."""


def cpuinfo_value(*names: str) -> str | None:
    """The first /proc/cpuinfo value of a line named one of ``names``; None where there is none, or no such file
    (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in names:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags as Linux lists them in /proc/cpuinfo ("flags" on x86, "Features" on Arm);
    None where there is no such file (macOS, Windows)."""
    flags = cpuinfo_value("flags", "Features")
    return None if flags is None else frozenset(flags.split())


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: on CUDA from compute capability 8.0 (Ampere); on a CPU only with bf16
    instructions (AVX512-BF16, AMX, Arm BF16). Without them bf16 convolutions are emulated: measured about 10x
    slower than fp32 on an AVX2-only CPU (benchmarks/bench_precision.py), 2.5x faster on one with them."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation (and its plain answer counts emulation)
            return torch.cuda.get_device_capability(device) >= (8, 0)
        except (RuntimeError, AssertionError):
            return True
    if device.type != "cpu":
        return True
    # ATEN_CPU_CAPABILITY=avx2 (or default) keeps PyTorch's own kernels off AVX-512, but oneDNN still sees the
    # CPU's bf16 instructions and says so: such a setting (used to simulate an AVX2-only CPU) counts as no bf16
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2", "zvector"):
        return False
    # the CPU's own flags, not oneDNN's answer: oneDNN says bf16 for every AVX-512 CPU (Skylake-SP, Cascade Lake,
    # Ice Lake), where it emulates bf16 with AVX-512 instructions
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: do not warn
