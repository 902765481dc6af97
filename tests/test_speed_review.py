"""The `auto` speed levers' edge cases: bf16 decided from the CPU's own flags (oneDNN says bf16 on every AVX-512
CPU) and from a GPU's compute capability on an older torch; an old teacher (no train.last_batch) still a teacher;
compile decided once for every rank and kept on --resume; the speed line printed without progress bars."""

import pytest
import torch

import bornagain.engine.device as device_module
from bornagain.errors import UserError

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


def test_a_teacher_trained_before_last_batch_is_still_this_sequences_teacher(tmp_path):
    """A teacher recorded before train.last_batch (its value of then: short) under today's default (auto: fill
    for the students): which images fill the last batch does not make it another teacher."""
    import yaml

    from bornagain.config import config_to_dict, load_config
    from bornagain.files import write_json
    from bornagain.pipelines.ban import check_teacher_run
    from bornagain.vision.config import VisionConfig

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    old = config_to_dict(load_config(VisionConfig, None, []))
    del old["ban"]["normalize_loss_weights"], old["ban"]["prepare_teacher"], old["train"]["compile"]
    del old["train"]["last_batch"]
    old["train"] |= {"precision": "fp32", "channels_last": False}  # a record holds values, never `auto`
    (teacher / "config.yaml").write_text(yaml.safe_dump(old))
    write_json(teacher / "results.json", {"model": old["model"]["name"], "test_accuracy": 0.5})
    cfg = load_config(VisionConfig, None, [f"ban.teacher_run={teacher}", f"output_dir={tmp_path / 'out'}"])
    assert check_teacher_run(cfg) == teacher
    other = load_config(VisionConfig, None, [f"ban.teacher_run={teacher}", "train.lr=0.05"])
    with pytest.raises(UserError, match="train.lr"):  # a real schedule change is still refused
        check_teacher_run(other)
