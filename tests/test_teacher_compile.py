"""ban.teacher_compile: the frozen teacher's forward pass compiled with frozen weights, decided apart from the
student (engine/speed.decide_teacher_compile), timed on the CPU for the machine's record, and its compile time kept
out of the training time."""

import gc
import json

import pytest
import torch

import bornagain_kd.pipelines.vision_speed as vision_speed
from bornagain_kd.engine.compile import FrozenCompiled, compile_frozen, compile_unavailable
from bornagain_kd.engine.speed import Choice, decide_teacher_compile, record_path

CPU = torch.device("cpu")
FAST = ["train.epochs=1", "ban.generations=1", "data.train_subset=200", "data.val_size=40", "train.progress=false",
        "train.trackers=[]", "train.num_threads=1", "model.name=resnet-8", "train.precision=fp32"]
EAGER_STUDENT = Choice(False, "no step time measured for this model here yet (this run measures one)", "auto")


def test_the_teacher_decision_follows_the_student_its_record_and_explicit_values():
    pays = {"eager_step_seconds": 0.04, "compiled_step_seconds": 0.03, "compile_seconds": 5.0}

    def decide(value="auto", student=EAGER_STUDENT, steps=10_000, entry=pays, recorded=None):
        return decide_teacher_compile(value, student=student, steps=steps, entry=entry, device=CPU, recorded=recorded)

    assert decide().value is True and "5 s to compile (measured)" in decide().reason  # 100 s saved >= 1.5 x 5 s
    assert decide(steps=100).value is False  # 1 s saved
    assert decide(entry={}).value is False  # nothing measured: this run measures its eager forward
    # only the eager forward measured: the teacher's own prior (30 s to compile on a CPU, 15% saved)
    assert decide(entry={"eager_step_seconds": 0.04}, steps=5_000).value is False  # 30 s saved < 45 s
    assert decide(entry={"eager_step_seconds": 0.04}, steps=10_000).value is True  # 60 s saved
    assert decide(student=Choice(True, "set", "set"), entry={}).value is True  # with a compiled student
    assert decide(student=Choice(False, "set", "set")).value is False  # train.compile=false: nothing compiles
    assert decide(student=Choice(False, "recorded when the run started", "recorded")).value is False
    assert decide(recorded=False).value is False and decide(recorded=False).how == "recorded"
    assert decide(False).value is False and decide(True, entry={}, steps=1).value is True  # explicit wins
    assert decide(False).how == "set"
    # on a GPU the teacher's forward is not timed (a host synchronisation per step): eager beside an eager student
    gpu = decide_teacher_compile("auto", student=EAGER_STUDENT, steps=10**6, entry={}, device=torch.device("cuda"))
    assert gpu.value is False and "timed on a CPU" in gpu.reason


def _frozen_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


@pytest.mark.slow
def test_a_frozen_compiled_teacher_predicts_what_the_eager_one_does():
    if compile_unavailable():
        pytest.skip(f"torch.compile cannot run here: {compile_unavailable()}")
    net = _frozen_net()
    x = torch.randn(6, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    compiled, done = compile_frozen(net, enabled=True)
    assert done and isinstance(compiled, FrozenCompiled)
    with torch.inference_mode():
        before = compiled(x)
        torch.testing.assert_close(before, net(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled(x[:4]), net(x[:4]), rtol=1e-4, atol=1e-4)  # a new shape: its own graph
        # the weights are constants of the compiled graph (freezing): a change in place is not seen, as a frozen
        # teacher's never is; an eager or plainly compiled module would see it
        net[0].weight.mul_(2.0)
        torch.testing.assert_close(compiled(x), before)
        assert not torch.allclose(net(x), before)
    assert compile_frozen(net, enabled=False) == (net, False)
    trainable = _frozen_net().requires_grad_(True)  # may still be trained: compiled, but its weights not frozen
    compiled, done = compile_frozen(trainable, enabled=True)
    assert done and not isinstance(compiled, FrozenCompiled)


def _pays_for_the_teacher_only(path, key):
    """A machine record on which only the teacher's compilation pays back."""
    if "frozen forward" in key:
        return {"eager_step_seconds": 1.0, "compiled_step_seconds": 0.5, "compile_seconds": 0.01}
    return {}


@pytest.mark.slow
def test_an_eager_student_gets_a_compiled_teacher_where_the_record_says_it_pays(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    from bornagain_kd.api import run_ban

    if compile_unavailable():
        pytest.skip(f"torch.compile cannot run here: {compile_unavailable()}")
    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(vision_speed, "read_record", _pays_for_the_teacher_only)
    torch._dynamo.reset()
    before = counters["frames"]["ok"]
    run_ban(None, overrides=FAST, output=tmp_path / "run")
    assert counters["frames"]["ok"] - before == 1  # the teacher's forward, once: one batch shape (fill)
    gc.collect()  # a finished generation's frozen-compiled teacher (folded: a GraphModule) is released, not held
    assert not [o for o in gc.get_objects()  # by dynamo's guards
                if isinstance(o, torch.fx.GraphModule) and any(True for _ in o.parameters())]
    r = json.loads((tmp_path / "run" / "gen1" / "results.json").read_text())
    assert r["speed"]["compile"]["value"] is False
    assert r["speed"]["teacher_compile"]["value"] is True and "to compile (measured)" in r["speed"]["teacher_compile"]["reason"]
    assert r["compile_seconds"] > 0  # the step that compiled the teacher, apart from the training time
    record = json.loads(record_path().read_text())
    (teacher,) = [v for k, v in record.items() if "frozen forward" in k]
    assert teacher["compiled_step_seconds"] > 0 and teacher["compile_seconds"] > 0
    (student,) = [v for k, v in record.items() if k.startswith("resnet-8 | teacher GraphModule")]
    assert any(k.startswith("resnet-8 (GraphModule") and "frozen forward" in k for k in record)  # by model name
    assert set(student) == {"eager_step_seconds"}  # the eager student's record holds no compile time
    gen0 = json.loads((tmp_path / "run" / "gen0" / "results.json").read_text())
    assert "teacher_compile" not in gen0["speed"]  # no teacher, no decision

    # explicit values win over the same record; train.compile=false compiles nothing, and does not even probe
    # whether this machine can compile
    monkeypatch.setattr(vision_speed, "compile_unavailable", lambda: pytest.fail("probed the compiler"))
    for override, reason in (("ban.teacher_compile=false", "set"), ("train.compile=false", "train.compile=false")):
        out = tmp_path / override.split("=")[0]
        run_ban(None, overrides=[*FAST, override], output=out)
        r = json.loads((out / "gen1" / "results.json").read_text())
        assert r["speed"]["teacher_compile"]["value"] is False and r["speed"]["teacher_compile"]["reason"] == reason


def test_a_resumed_sequence_keeps_its_explicit_compile_values_for_generations_not_begun(tmp_path):
    """`--resume` without the flags a sequence was started with: auto takes the sequence's explicit values, so a
    generation that begins after the resume compiles (or not) as the first ones did."""
    from bornagain_kd.api import run_ban
    from bornagain_kd.config import load_config
    from bornagain_kd.pipelines.vision_speed import keep_explicit_compile
    from bornagain_kd.vision.config import VisionConfig

    out = tmp_path / "run"
    run_ban(None, overrides=[*FAST, "ban.generations=0", "train.compile=false", "ban.teacher_compile=true"],
            output=out)
    cfg = keep_explicit_compile(load_config(VisionConfig, None, FAST), out)
    assert cfg.train.compile is False and cfg.ban.teacher_compile is True
    cfg = keep_explicit_compile(load_config(VisionConfig, None, [*FAST, "ban.teacher_compile=false"]), out)
    assert cfg.ban.teacher_compile is False  # an explicit value on the resume wins
    fresh = keep_explicit_compile(load_config(VisionConfig, None, FAST), tmp_path / "none")
    assert fresh.train.compile == "auto" and fresh.ban.teacher_compile == "auto"


def test_a_run_recorded_before_the_key_resumes_with_the_plain_compile_it_began_with(tmp_path, monkeypatch):
    """Before ban.teacher_compile the teacher was compiled plainly (no frozen weights) exactly where the student
    was: a run recorded then resumes so, not with a frozen-compiled teacher (not bit for bit the same)."""
    from bornagain_kd.api import run_ban
    from bornagain_kd.files import read_json, write_json
    from bornagain_kd.pipelines import classifier

    out = tmp_path / "run"
    run_ban(None, overrides=[*FAST, "train.compile=false"], output=out)
    settings = read_json(out / "gen1" / "settings.json")
    del settings["settings"]["ban"]["teacher_compile"]  # as recorded before the key existed
    write_json(out / "gen1" / "settings.json", settings)
    recorded = vision_speed.recorded_keys(out / "gen1")
    assert recorded["ban.teacher_compile"] == "student"
    compiled = Choice(True, "recorded when the run started", "recorded")
    choice = decide_teacher_compile("auto", student=compiled, steps=10, entry={}, device=CPU,
                                    recorded=recorded["ban.teacher_compile"])
    assert (choice.value, choice.how) == ("student", "recorded")
    assert decide_teacher_compile(True, student=compiled, steps=10, entry={}, device=CPU,
                                  recorded="student").value is True  # an explicit value still wins
    # the task compiles such a teacher plainly, as the student (not with frozen weights)
    calls = []
    def fake(kind):
        return lambda module, **kw: (calls.append((kind, kw["enabled"])), (module, False))[1]

    monkeypatch.setattr(classifier, "maybe_compile", fake("plain"))
    monkeypatch.setattr(classifier, "compile_frozen", fake("frozen"))
    from bornagain_kd.config import load_config
    from bornagain_kd.vision.config import VisionConfig

    cfg = load_config(VisionConfig, None, [*FAST, "train.compile=true", "ban.teacher_compile=student"])
    _task_with_teacher(cfg)
    cfg = load_config(VisionConfig, None, [*FAST, "train.compile=true", "ban.teacher_compile=true"])
    _task_with_teacher(cfg)
    assert calls == [("plain", True), ("frozen", True)]


def _task_with_teacher(cfg) -> None:
    """A classification task of a student with a frozen teacher (what it compiles is what the test watches)."""
    from bornagain_kd.models import create_model
    from bornagain_kd.pipelines.classifier import ClassifierTask, RunSpec
    from bornagain_kd.vision.prepare import prepare_data

    data = prepare_data(cfg.data, cfg.seed)
    teacher = create_model("resnet-8", data.num_classes, in_channels=data.in_channels).eval().requires_grad_(False)
    spec = RunSpec(name="gen1", model_name="resnet-8", seed=0, loss_fn=cfg.ban.student_loss(), teacher=teacher)
    ClassifierTask(cfg, data, spec, lambda: create_model("resnet-8", data.num_classes), CPU)
