"""`train.compile`: torch.compile for the trained model (and, in the pipelines, a frozen teacher), with an
eager fallback and one clear line when this machine cannot compile."""

from __future__ import annotations

import functools
import getpass
import os
import sys
import tempfile

import torch

from bornagain_kd.errors import describe


@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (a missing C++ compiler, an unsupported Python), or None.
    Probed once per process on a one-line function, so a model never half-compiles into an error."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    separate_kernel_cache(os.environ)
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4))
    except Exception as e:  # noqa: BLE001 - any failure means: train eagerly
        return describe(e)
    return None


def separate_kernel_cache(environ) -> str | None:
    """Give each ATEN_CPU_CAPABILITY setting a TorchInductor kernel cache of its own (unless
    TORCHINDUCTOR_CACHE_DIR is set): the on-disk cache does not key on it, and kernels compiled under one setting
    and loaded under the other crashed the process (a segmentation fault in the compiled backward, torch 2.13, an
    AVX-512 CPU, runs with and without ATEN_CPU_CAPABILITY=avx2). Called before torch first asks for the cache
    (pipelines/common.start_process, and the compile probe); torch then keeps the variable. Returns the
    directory chosen, or None."""
    capability = environ.get("ATEN_CPU_CAPABILITY")
    if not capability or environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_{capability}")
    return environ["TORCHINDUCTOR_CACHE_DIR"]


def maybe_compile(module: torch.nn.Module, *, enabled: bool, mode: str = "default", announce: bool = True,
                  dynamic: bool | None = None, key: str = "train.compile",
                  fallback: str = "training eagerly") -> tuple[torch.nn.Module, bool]:
    """(module compiled with ``mode``, True), or (module, False) when disabled or impossible here (``announce``:
    one warning line naming the config ``key`` that asked, and what runs instead).
    A graph that fails to compile later falls back to eager for that graph (dynamo's suppress_errors)."""
    if not enabled:
        return module, False
    reason = compile_unavailable()
    if reason is not None:
        if announce:
            print(f"bornagain: warning: {key}=true but torch.compile cannot run here ({reason}); "
                  f"{fallback}. Install a C++ compiler (gcc) or set {key}=false", file=sys.stderr)
        return module, False
    import torch._dynamo  # noqa: PLC0415

    torch._dynamo.config.suppress_errors = True
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=dynamic), True


class FrozenCompiled(torch.nn.Module):
    """A frozen module (a BAN teacher) compiled with TorchInductor's freezing: its weights are treated as constants,
    so convolution weights are prepacked once into oneDNN's layout and convolution + bias + ReLU fused (measured on
    2 CPU cores, bf16, batch 128: ResNet-20's forward 49 -> 31 ms, WRN-16-4 322 -> 258 ms, DenseNet-BC-40-12 156 ->
    123 ms). Valid only because nothing ever updates it, and effective only where it runs without autograd (the
    teacher always runs under inference_mode); the setting is patched for its own calls, so a student compiled
    beside it is compiled as before."""

    def __init__(self, compiled: torch.nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config  # noqa: PLC0415

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def compile_frozen(module: torch.nn.Module, *, enabled: bool, mode: str = "default",
                   announce: bool = False) -> tuple[torch.nn.Module, bool]:
    """(``module`` compiled for inference with frozen weights, True), or (``module``, False) when disabled or
    impossible here (``announce``: a warning naming ban.teacher_compile). A module with a parameter that requires
    grad may still be trained by someone: it is compiled without freezing."""
    # Static shapes: a new batch shape compiles a graph of its own. Freezing's fused convolutions in channels_last
    # met a dynamic batch dimension with a wrong output stride (an inductor assertion, torch 2.13, CPU).
    compiled, done = maybe_compile(module, enabled=enabled, mode=mode, announce=announce, dynamic=False,
                                   key="ban.teacher_compile", fallback="the teacher runs eagerly")
    if not done:
        return module, False
    return (compiled if any(p.requires_grad for p in module.parameters()) else FrozenCompiled(compiled)), True


def compile_events() -> int:
    """A number that grows whenever torch.compile compiles or recompiles a graph (dynamo's timing records;
    0 where this torch does not keep them): the engine times steps that compiled apart from training."""
    try:
        from torch._dynamo.utils import compilation_time_metrics  # noqa: PLC0415
    except ImportError:
        return 0
    return sum(len(v) for v in compilation_time_metrics.values())


def fused_optimizer_kwargs(optimizer_cls: type, device: torch.device) -> dict:
    """{"fused": True} where PyTorch has a fused kernel for this optimizer on this device (SGD, Adam, AdamW
    on CPU and CUDA): one kernel over all parameters instead of a Python loop (measured 6x faster per SGD step
    for ResNet-20 on CPU, benchmarks/README). Else {}."""
    if device.type not in ("cpu", "cuda") or optimizer_cls not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        return {}
    return {"fused": True}
