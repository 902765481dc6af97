"""`auto` speed settings (engine/speed.py, pipelines/vision_speed.py) and compiling once: the choices follow the
hardware query (faked both ways), an explicit value wins, a run keeps the precision it recorded, the compile
decision follows the machine's measurements, and a compiled run compiles its step once despite a short last batch."""

import json
import textwrap

import pytest
import torch

import bornagain_kd.engine.device as device_module
from bornagain_kd.config import load_config
from bornagain_kd.engine.speed import add_measurement, decide_compile, read_record, record_path
from bornagain_kd.pipelines.vision_speed import resolve_vision_speed
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.vision.splits import iterate_batches

CPU = torch.device("cpu")
FAST = ["train.epochs=1", "ban.generations=0", "data.train_subset=200", "data.val_size=40", "train.progress=false",
        "train.trackers=[]", "train.num_threads=1", "model.name=resnet-8"]


@pytest.fixture
def bf16_here(monkeypatch):
    """Fake the one hardware query (engine.device.native_bf16) to say bf16 is native, or not."""

    def fake(native: bool) -> None:
        monkeypatch.setattr(device_module, "native_bf16", lambda device: native)

    return fake


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_hardware_and_explicit_values_win(tmp_path, bf16_here, native):
    bf16_here(native)
    cfg, choices = resolve_vision_speed(load_config(VisionConfig, None, ["train.device=cpu"]), tmp_path)
    assert cfg.train.precision == ("bf16" if native else "fp32") and choices["precision"].how == "auto"
    assert choices["precision"].reason.startswith("native bf16") == native
    assert cfg.train.channels_last is True and cfg.train.compile == "auto"  # compile: decided per run
    for explicit in ("fp32", "bf16"):
        cfg, choices = resolve_vision_speed(load_config(VisionConfig, None, [f"train.precision={explicit}",
                                                                             "train.channels_last=false"]), tmp_path)
        assert cfg.train.precision == explicit and choices["precision"].how == "set"
        assert cfg.train.channels_last is False
    # the teacher's own precision: null follows the students, auto follows the hardware even for fp32 students
    cfg, _ = resolve_vision_speed(load_config(VisionConfig, None, ["train.precision=fp32",
                                                                   "ban.teacher_precision=auto"]), tmp_path)
    assert cfg.ban.teacher_precision == ("bf16" if native else "fp32")
    cfg, _ = resolve_vision_speed(load_config(VisionConfig, None, ["train.precision=fp32"]), tmp_path)
    assert cfg.ban.teacher_precision is None


def test_an_avx2_kernel_setting_counts_as_no_bf16(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert device_module.native_bf16(CPU) is False


def test_a_run_keeps_the_precision_it_recorded_on_another_machine(tmp_path, bf16_here, capsys):
    from bornagain_kd.api import run_ban

    bf16_here(True)
    out = tmp_path / "run"
    run_ban(None, overrides=[*FAST, "train.epochs=2", "train.checkpoint_every_steps=1"], output=out)
    results = json.loads((out / "gen0" / "results.json").read_text())
    assert results["speed"]["precision"] == {"value": "bf16", "reason": "native bf16 on this CPU", "how": "auto"}
    # the same run directory, `auto` again, on a machine without bf16: the recorded bf16 is kept (no refusal)
    bf16_here(False)
    cfg, choices = resolve_vision_speed(load_config(VisionConfig, None, FAST), out)
    assert cfg.train.precision == "bf16" and choices["precision"].how == "recorded"
    run_ban(None, overrides=[*FAST, "train.epochs=2", "train.checkpoint_every_steps=1"], output=out, resume=True)
    from bornagain_kd.errors import UserError

    with pytest.raises(UserError, match="train.precision"):  # an explicit other value is a change, refused
        run_ban(None, overrides=[*FAST, "train.epochs=2", "train.precision=fp32"], output=out, resume=True)


def test_compile_auto_pays_back_from_measurements_only():
    entry: dict = {}
    assert decide_compile("auto", steps=10**6, entry=entry, device=CPU).value is False  # nothing measured yet
    entry = {"eager_step_seconds": 0.2}  # eager measured; compile seconds and saving still the priors (60 s, 15%)
    assert decide_compile("auto", steps=100, entry=entry, device=CPU).value is False  # saves 3 s
    assert decide_compile("auto", steps=10_000, entry=entry, device=CPU).value is True  # saves 300 s
    entry |= {"compiled_step_seconds": 0.1, "compile_seconds": 5.0}  # measured: 0.1 s a step, 5 s to compile
    choice = decide_compile("auto", steps=100, entry=entry, device=CPU)
    assert choice.value is True and "5 s to compile (measured)" in choice.reason
    assert decide_compile("auto", steps=50, entry=entry, device=CPU).value is False  # 5 s saved < 1.5 x 5 s
    assert decide_compile(False, steps=10**6, entry=entry, device=CPU).value is False  # explicit wins
    assert decide_compile(True, steps=1, entry=entry, device=CPU).value is True


def test_measurements_are_recorded_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path))
    add_measurement(record_path(), "a", steps=10, train_seconds=2.0, compile_seconds=None)
    add_measurement(record_path(), "a", steps=10, train_seconds=1.0, compile_seconds=7.0)
    add_measurement(record_path(), "a", steps=10, train_seconds=3.0, compile_seconds=2.0)  # a busier machine
    assert read_record(record_path(), "a") == {"eager_step_seconds": 0.2, "compiled_step_seconds": 0.1,
                                               "compile_seconds": 2.0}  # the fastest steps, the latest compile
    assert read_record(record_path(), "b") == {}


def test_a_run_records_its_step_time_for_the_next_decision(tmp_path, monkeypatch):
    from bornagain_kd.api import train

    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "cache"))
    train(None, overrides=FAST, output=tmp_path / "run")
    speed = json.loads((tmp_path / "run" / "results.json").read_text())["speed"]
    assert speed["compile"]["value"] is False and "no step time measured" in speed["compile"]["reason"]
    (entry,) = json.loads(record_path().read_text()).values()
    assert entry["eager_step_seconds"] > 0


@pytest.mark.parametrize("last", ["fill", "drop", "short"])
def test_the_last_batch_of_an_epoch(last):
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(iterate_batches(10, 4, shuffle=True, generator=torch.Generator().manual_seed(0), last=last))
    sizes = [len(b) for b in batches]
    assert sizes == {"fill": [4, 4, 4], "drop": [4, 4], "short": [4, 4, 2]}[last]
    assert torch.equal(torch.cat(batches)[:8], order[:8])
    if last == "fill":  # topped up with the first of the order: every index at least once
        assert torch.equal(batches[-1], torch.cat([order[8:], order[:2]]))
    assert [len(b) for b in iterate_batches(3, 4, shuffle=False, generator=None, last=last)] == [3]


NET = textwrap.dedent('''
    import torch.nn as nn

    def build_net(num_classes, in_channels):
        """A tiny CNN: one convolution, a batch norm, pooled features, a linear head."""
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
''')


def _frames_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


@pytest.mark.slow
def test_a_compiled_generation_compiles_its_step_once(tmp_path):
    """Two epochs of 100 images in batches of 32 (a short last batch of 4 without `fill`), teacher and student
    compiled: the student's step compiles once per run, the frozen teacher once per generation, evaluation
    (eager) never. With the short last batch every compiled model compiles again."""
    from bornagain_kd.engine.compile import compile_unavailable
    from bornagain_kd.pipelines.ban import run_ban

    if compile_unavailable():
        pytest.skip(f"torch.compile cannot run here: {compile_unavailable()}")
    (tmp_path / "nets.py").write_text(NET)
    compiled = {}
    for last in ("fill", "short"):
        cfg = load_config(VisionConfig, None, [
            f"model.name={tmp_path / 'nets.py'}:build_net", "train.epochs=2", "ban.generations=1",
            "data.train_subset=136", "data.val_size=36", "train.batch_size=32", "train.compile=true",
            f"train.last_batch={last}", "train.progress=false", "train.trackers=[]", "train.num_threads=1",
            "train.precision=fp32"])
        torch._dynamo.reset()  # nothing compiled before counts
        before = _frames_compiled()
        run_ban(cfg, tmp_path / last, resume=False, plots=False)
        compiled[last] = _frames_compiled() - before
    # the students' step (gen0's graph serves gen1's student where torch inlines module instances: 1 or 2) and
    # the teacher's forward under inference mode (1); nothing for the short batch or for evaluation
    assert 2 <= compiled["fill"] <= 3, compiled
    assert compiled["short"] > compiled["fill"], compiled  # the counter sees a recompile
    r = json.loads((tmp_path / "fill" / "gen1" / "results.json").read_text())
    assert r["compile_seconds"] > 0 and r["speed"]["compile"] == {"value": True, "reason": "set", "how": "set"}


def test_a_resumed_channels_last_optimizer_keeps_its_parameters_layout(tmp_path):
    """The fused SGD step reads momentum buffers in memory order: a contiguous buffer (as a checkpoint holds it)
    beside a channels_last weight moved it by other elements' momentum. Loading gives each buffer its weight's
    layout, so the step after a resume is the uninterrupted one."""
    from bornagain_kd.engine.checkpoint import load_checkpoint, save_checkpoint

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)

    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    model, opt = model_and_optimizer()
    model(x).square().sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, scheduler=None, extra={})
    resumed, opt2 = model_and_optimizer()
    load_checkpoint(tmp_path / "c.safetensors", model=resumed, optimizer=opt2, restore_rng=False)
    for m, o in ((model, opt), (resumed, opt2)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    assert torch.equal(model.weight, resumed.weight)


def test_the_first_line_says_what_was_chosen_and_why(tmp_path, bf16_here, capsys):
    from bornagain_kd.cli import main

    bf16_here(True)
    assert main(["ban", "--output", str(tmp_path / "run"), *FAST]) == 0
    out = capsys.readouterr().out.splitlines()
    first = out[0]
    assert first.startswith("bornagain ban: resnet-8") and first.endswith(
        "speed: bf16 (native bf16 on this CPU), channels_last (convolutional model), last batch fill (one batch "
        "shape: a compiled step compiles once), compile or eager (decided per run from its length: see each run's "
        "line)"), first
    assert any(line.startswith("[gen0] speed: bf16") for line in out)  # each run's line, without progress bars too
    speed = json.loads((tmp_path / "run" / "results.json").read_text())["speed"]
    assert speed["precision"]["value"] == "bf16" and speed["channels_last"]["value"] is True
    assert speed["last_batch"] == {"value": "fill", "reason": "one batch shape: a compiled step compiles once",
                                   "how": "auto"}
