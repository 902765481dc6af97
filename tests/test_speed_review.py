"""The `auto` speed levers' edge cases: bf16 decided from the CPU's own flags (oneDNN says bf16 on every AVX-512
CPU) and from a GPU's compute capability on an older torch; an old teacher (no train.last_batch) still a teacher;
compile decided once for every rank and kept on --resume; the speed line printed without progress bars."""

import pytest
import torch

import bornagain.engine.device as device_module

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [({"avx512f", "avx512_vnni"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"avx512f", "amx_bf16"}, True), ({"fp", "asimd", "bf16"}, True)])
def test_cpu_bf16_follows_the_cpu_flags_not_onednn(monkeypatch, flags, native):
    # an AVX-512 CPU without bf16 instructions (Cascade Lake): oneDNN would say bf16, the flags say emulated
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    assert device_module.native_bf16(CPU) is native
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # simulating an AVX2-only CPU: never native
    assert device_module.native_bf16(CPU) is False


def test_cpu_flags_reads_this_machine():
    flags = device_module.cpu_flags()
    assert flags is None or "fpu" in flags or "fp" in flags  # x86 always lists fpu, Arm fp


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_bf16_on_a_torch_without_including_emulation(monkeypatch, capability, native):
    def old_is_bf16_supported():  # torch < 2.3's signature: no including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_module.native_bf16(torch.device("cuda", 0)) is native
