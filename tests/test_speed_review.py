"""The `auto` speed levers' edge cases: bf16 decided from the CPU's own flags (oneDNN says bf16 on every AVX-512
CPU) and from a GPU's compute capability on an older torch; an old teacher (no train.last_batch) still a teacher;
compile decided once for every rank and kept on --resume; the speed line printed without progress bars."""

import pytest
import torch

import bornagain_kd.engine.device as device_module
from bornagain_kd.errors import UserError

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

    from bornagain_kd.config import config_to_dict, load_config
    from bornagain_kd.files import write_json
    from bornagain_kd.pipelines.ban import check_teacher_run
    from bornagain_kd.vision.config import VisionConfig

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


def _paying_record(monkeypatch, tmp_path, key: str) -> None:
    """This machine's record says compiling pays back within a long run (1 s compile, steps 10x faster)."""
    from bornagain_kd.engine.speed import add_measurement, record_path

    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "cache"))
    add_measurement(record_path(), key, steps=10, train_seconds=10.0, compile_seconds=None)
    add_measurement(record_path(), key, steps=10, train_seconds=1.0, compile_seconds=1.0)


def test_a_resumed_run_keeps_the_compile_choice_it_started_with(tmp_path, monkeypatch):
    """A run started eager (its record had no step time) is resumed after the record grew: still eager."""
    import dataclasses

    from bornagain_kd.config import config_to_dict, load_config
    from bornagain_kd.engine.run import open_run
    from bornagain_kd.pipelines.vision_speed import decide, recorded_keys, resolve_vision_speed
    from bornagain_kd.vision.config import VisionConfig, vision_settings

    _paying_record(monkeypatch, tmp_path, "k")
    cfg, _ = resolve_vision_speed(load_config(VisionConfig, None, ["train.device=cpu"]), tmp_path / "run")
    assert decide(cfg, "k", 1000, CPU).value is True  # a new run would compile now
    started = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    open_run(tmp_path / "run", vision_settings(started), resume=False, main=True, config=config_to_dict(started))
    choice = decide(cfg, "k", 1000, CPU, recorded=recorded_keys(tmp_path / "run").get("train.compile"))
    assert (choice.value, choice.how) == (False, "recorded")
    forced = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True))
    assert decide(forced, "k", 1000, CPU, recorded=False).value is True  # an explicit value still wins


def test_every_rank_takes_rank_zeros_compile_decision(tmp_path, monkeypatch):
    """Rank 1's machine has measured compiling paying back, rank 0's has not: rank 1 follows rank 0 (the share
    stands in for all_gather_objects across two ranks; without a process group it is [own choice])."""
    from bornagain_kd.config import load_config
    from bornagain_kd.engine.speed import Choice
    from bornagain_kd.pipelines.vision_speed import decide, resolve_vision_speed
    from bornagain_kd.vision.config import VisionConfig

    rank0 = Choice(False, "no step time measured for this model here yet", "auto")
    _paying_record(monkeypatch, tmp_path, "k")
    cfg, _ = resolve_vision_speed(load_config(VisionConfig, None, ["train.device=cpu"]), tmp_path / "run")
    assert decide(cfg, "k", 1000, CPU).value is True  # this process alone (no process group): its own record
    assert decide(cfg, "k", 1000, CPU, share=lambda mine: [rank0, mine]) == rank0


def test_bornagain_train_says_what_auto_chose_without_progress_bars(tmp_path, monkeypatch, capsys):
    from bornagain_kd.cli import main

    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "cache"))
    fast = ["train.epochs=1", "data.train_subset=100", "data.val_size=20", "train.progress=false", "train.trackers=[]",
            "train.num_threads=1", "model.name=resnet-8", "train.batch_size=64"]
    assert main(["train", "--output", str(tmp_path / "run"), *fast]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[train] speed: ")]
    assert "last batch fill (one batch shape" in line and "eager (no step time measured" in line


def test_last_batch_auto_takes_a_real_recorded_value_only():
    from bornagain_kd.pipelines.vision_speed import resolve_last_batch

    assert resolve_last_batch("auto", "short").value == "short"  # a run made before the key continues as it was
    assert resolve_last_batch("auto", None).value == "fill"
    assert resolve_last_batch("auto", "auto").value == "fill"  # a record written unresolved: not a choice
    assert resolve_last_batch("drop", "short").value == "drop"


def test_a_measurement_waits_for_another_writer_and_keeps_its_entry(tmp_path):
    """Another task holds the record's lock while it writes its own key: this task's update waits, then merges."""
    import threading
    import time

    from bornagain_kd.engine.speed import add_measurement, read_record, record_lock

    path = tmp_path / "compile_record.json"
    with record_lock(path):
        writer = threading.Thread(target=add_measurement, args=(path, "mine"),
                                  kwargs={"steps": 10, "train_seconds": 1.0, "compile_seconds": None})
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive()  # waiting for the other task's lock, not writing over it
        path.write_text('{"theirs": {"eager_step_seconds": 0.5}}')  # the other task's write, under its lock
    writer.join(timeout=30)
    assert read_record(path, "theirs") == {"eager_step_seconds": 0.5}
    assert read_record(path, "mine") == {"eager_step_seconds": 0.1}


def test_the_compile_mode_is_part_of_the_record_key():
    from bornagain_kd.engine.speed import compile_key

    keys = {compile_key("resnet-8", teacher=None, shape=(64, 3, 32, 32), precision="bf16", channels_last=True,
                        device=CPU, mode=mode) for mode in ("default", "max-autotune")}
    assert len(keys) == 2


def test_a_training_set_smaller_than_a_batch_still_trains_and_an_empty_one_yields_nothing():
    from bornagain_kd.vision.splits import iterate_batches

    for last in ("short", "drop", "fill"):
        (batch,) = iterate_batches(5, 8, shuffle=False, generator=None, last=last)
        assert batch.tolist() == [0, 1, 2, 3, 4]
    (batch,) = iterate_batches(5, 8, shuffle=False, generator=None, drop_last=True)
    assert batch.shape == (5,)
    assert list(iterate_batches(0, 8, shuffle=False, generator=None)) == []
