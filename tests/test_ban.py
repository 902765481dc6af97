"""Born-again sequence: the teacher is frozen, separate and in eval mode; generations and ensembles."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bornagain_kd.pipelines.ban import label_loss, run_ban
from bornagain_kd.config import load_config
from bornagain_kd.pipelines.classifier import RunSpec, fit
from bornagain_kd.reports.ensembles import average_probabilities, ensemble_windows
from bornagain_kd.distill.ban_losses import born_again_loss_parts
from bornagain_kd.models import create_model
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.vision.prepare import prepare_data

FAST = ["train.progress=false", "train.trackers=[]", "model.name=resnet-8", "train.batch_size=128"]


def _cfg(*overrides):
    return load_config(VisionConfig, None, [*FAST, *overrides])


@pytest.fixture(scope="module")
def digits():
    return prepare_data(_cfg().data, 0)


class SpyTeacher(torch.nn.Module):
    """Wraps a model and records the mode it was called in and whether grad was enabled."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return self.inner(x)


def test_teacher_is_frozen_separate_and_in_eval_mode(digits, tmp_path):
    torch.manual_seed(0)
    teacher = SpyTeacher(create_model("resnet-8", 10, in_channels=1))
    teacher.requires_grad_(False)
    teacher.train()  # a careless caller: the loop must still run it in eval mode
    student = create_model("resnet-8", 10, in_channels=1)
    assert student is not teacher.inner
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # includes BN running stats
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = lambda s, t, y: born_again_loss_parts(s, t, y, label_weight=1.0, teacher_weight=1.0)
    fit(tmp_path / "run", _cfg("train.epochs=1", "data.train_subset=256"), digits,
        RunSpec("gen1", "resnet-8", 3, loss, teacher=teacher), lambda: student, resume=False)
    assert teacher.calls and all(mode == (False, False, True) for mode in teacher.calls)
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed during the student's training"
    assert not all(torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_zero_teacher_weight_reproduces_plain_training(digits, tmp_path):
    cfg = _cfg("train.epochs=2")
    plain = fit(tmp_path / "plain", cfg, digits, RunSpec("plain", "resnet-8", 123, label_loss),
                lambda: create_model("resnet-8", 10, in_channels=1), resume=False)
    torch.manual_seed(99)
    teacher = create_model("resnet-8", 10, in_channels=1).eval().requires_grad_(False)
    no_kd = lambda s, t, y: born_again_loss_parts(s, t, y, label_weight=1.0, teacher_weight=0.0)
    taught = fit(tmp_path / "taught", cfg, digits, RunSpec("taught", "resnet-8", 123, no_kd, teacher=teacher),
                 lambda: create_model("resnet-8", 10, in_channels=1), resume=False)
    assert taught["test_accuracy"] == plain["test_accuracy"] and taught["val_nll"] == plain["val_nll"]
    a = load_file(tmp_path / "plain" / "model.safetensors")
    b = load_file(tmp_path / "taught" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_term_changes_the_student(digits, tmp_path):
    # the opposite check: with a real KD weight the student must differ (the term is not inert)
    cfg = _cfg("train.epochs=1")
    torch.manual_seed(99)
    teacher = create_model("resnet-8", 10, in_channels=1).eval().requires_grad_(False)
    kd = lambda s, t, y: born_again_loss_parts(s, t, y, label_weight=1.0, teacher_weight=1.0)
    fit(tmp_path / "a", cfg, digits, RunSpec("a", "resnet-8", 5, label_loss),
        lambda: create_model("resnet-8", 10, in_channels=1), resume=False)
    fit(tmp_path / "b", cfg, digits, RunSpec("b", "resnet-8", 5, kd, teacher=teacher),
        lambda: create_model("resnet-8", 10, in_channels=1), resume=False)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_ban_sequence_writes_generations_ensembles_and_tables(tmp_path):
    cfg = _cfg("train.epochs=1", "ban.generations=3", "ban.ensembles=[2,3]")
    results = run_ban(cfg, tmp_path / "run", resume=False)
    for g in range(4):
        run = tmp_path / "run" / f"gen{g}"
        assert (run / "results.json").is_file() and (run / "model.safetensors").is_file()
        assert not (run / "checkpoint.safetensors").exists()
    assert [g["generation"] for g in results["generations"]] == [0, 1, 2, 3]
    gen_seeds = {g["seed"] for g in results["generations"]}
    assert len(gen_seeds) == 4  # every generation is a fresh model with its own seed
    names = {e["name"]: e["members"] for e in results["ensembles"]}
    assert names == {"Ens*2": [2, 3], "Ens*3": [1, 2, 3], "All": [0, 1, 2, 3]}
    table = (tmp_path / "run" / "table.md").read_text()
    assert "| Network | Parameters | Baseline (teacher) | BAN-1 | BAN-2 | BAN-3 | Ens*2 | Ens*3 | All |" in table
    assert json.loads((tmp_path / "run" / "results.json").read_text())["generations"][1]["ece"] >= 0
    for png in ("curves.png", "generations.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # gen1's logged loss parts: the teacher term is really there
    rec = [json.loads(l) for l in (tmp_path / "run" / "gen1" / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["train_kd_loss"] > 0


def test_ensemble_is_the_mean_of_saved_probabilities(tmp_path):
    from bornagain_kd.pipelines.classifier import load_probs

    cfg = _cfg("train.epochs=1", "ban.generations=2", "ban.ensembles=[2]")
    results = run_ban(cfg, tmp_path / "run", resume=False)
    p1, labels = load_probs(tmp_path / "run" / "gen1" / "test_probs.safetensors")
    p2, _ = load_probs(tmp_path / "run" / "gen2" / "test_probs.safetensors")
    manual = 100.0 * float((((p1.double() + p2.double()) / 2).argmax(1) != labels).double().mean())
    ens = next(e for e in results["ensembles"] if e["name"] == "Ens*2")
    assert ens["test_error"] == pytest.approx(manual)


def test_ensemble_windows_and_teacher_option():
    assert ensemble_windows([0, 1, 2, 3], (2, 3), include_teacher=False) == [
        ("Ens*2", [2, 3]), ("Ens*3", [1, 2, 3]), ("All", [0, 1, 2, 3])]
    assert ensemble_windows([0, 1, 2], (3,), include_teacher=True) == [("Ens*3", [0, 1, 2]), ("All", [0, 1, 2])]
    assert ensemble_windows([0, 1], (2, 3), include_teacher=False) == [("All", [0, 1])]
    p = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.3, 0.7]])
    assert torch.allclose(average_probabilities(list(p)), torch.tensor([[0.6, 0.4]], dtype=torch.float64))


def test_resume_does_not_retrain_finished_generations(tmp_path):
    cfg = _cfg("train.epochs=1", "ban.generations=1")
    run_ban(cfg, tmp_path / "run", resume=False)
    gen0 = tmp_path / "run" / "gen0" / "model.safetensors"
    stamp = gen0.stat().st_mtime_ns
    (tmp_path / "run" / "gen1" / "results.json").unlink()  # as if gen1 had been interrupted
    results = run_ban(cfg, tmp_path / "run", resume=True)
    assert gen0.stat().st_mtime_ns == stamp
    assert (tmp_path / "run" / "gen1" / "results.json").is_file()
    assert len(results["generations"]) == 2


def test_report_renders_several_runs(tmp_path, capsys):
    from bornagain_kd.cli import main

    for name, seed in (("a", 0), ("b", 1)):
        run_ban(_cfg("train.epochs=1", "ban.generations=1", f"seed={seed}"), tmp_path / name, resume=False)
    # --per-run: one row per run (without it, runs that differ only in seed are pooled: test_ban_seeds.py)
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--per-run", "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert out.count("| resnet-8 |") == 2
    assert (tmp_path / "rep" / "table.csv").read_text().startswith("Network,Parameters,Baseline (teacher),BAN-1")
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_teacher_run_is_reused_not_retrained(tmp_path, capsys):
    from bornagain_kd.errors import UserError

    first = run_ban(_cfg("train.epochs=1", "ban.generations=0"), tmp_path / "teacher", resume=False)
    weights = tmp_path / "teacher" / "gen0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    cfg = _cfg("train.epochs=1", "ban.generations=1", f"ban.teacher_run={tmp_path / 'teacher' / 'gen0'}")
    results = run_ban(cfg, tmp_path / "student", resume=False)
    assert weights.stat().st_mtime_ns == stamp and not (tmp_path / "student" / "gen0").exists()
    assert results["generations"][0]["test_error"] == first["generations"][0]["test_error"]
    wrong = _cfg("train.epochs=1", "ban.generations=1", "model.name=resnet-14",
                 f"ban.teacher_run={tmp_path / 'teacher' / 'gen0'}")
    with pytest.raises(UserError, match="resnet-8"):
        run_ban(wrong, tmp_path / "other", resume=False)


def test_a_teacher_run_of_other_data_or_schedule_is_refused(tmp_path):
    """A reused teacher must come from the same data and split (another split seed could have trained it on
    this run's validation images) and, unless allowed explicitly, the same schedule; nothing is written."""
    from bornagain_kd.errors import UserError

    run_ban(_cfg("train.epochs=1", "ban.generations=0"), tmp_path / "teacher", resume=False)
    teacher = f"ban.teacher_run={tmp_path / 'teacher' / 'gen0'}"
    for override, key in (("seed=1", "seed"), ("data.val_size=0.2", "data.val_size"),
                          ("train.epochs=2", "train.epochs"), ("train.lr=0.05", "train.lr")):
        with pytest.raises(UserError, match=f"changed: {key}"):
            run_ban(_cfg("train.epochs=1", "ban.generations=1", teacher, override), tmp_path / "refused", resume=False)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(UserError, match="teacher_run_other_schedule=true"):
        run_ban(_cfg("train.epochs=2", "ban.generations=1", teacher), tmp_path / "refused", resume=False)
    allowed = run_ban(_cfg("train.epochs=2", "ban.generations=1", teacher, "ban.teacher_run_other_schedule=true",
                           "train.progress=false", "train.num_threads=1"), tmp_path / "allowed", resume=False)
    assert len(allowed["generations"]) == 2
    with pytest.raises(UserError, match="changed: seed"):  # the data are never waived
        run_ban(_cfg("train.epochs=1", "ban.generations=1", teacher, "seed=3", "ban.teacher_run_other_schedule=true"),
                tmp_path / "refused", resume=False)


def test_a_teacher_run_is_compared_on_what_reached_its_model(tmp_path):
    """model.dropout reaches only the architectures that take it. A Table 2 recipe sets it for its WRN students
    and points ban.teacher_run at a DenseNet teacher trained without it: that teacher is accepted (it never saw
    the dropout). A WRN teacher trained with dropout 0.3 is refused for a run whose WRN would get 0.0, and
    accepted for one that leaves the family's default (0.3)."""
    from bornagain_kd.errors import UserError

    small = ["train.epochs=1", "data.train_subset=200", "data.val_size=50", "train.num_threads=1"]
    run_ban(_cfg(*small, "model.name=densenet-bc-10-4", "ban.generations=0"), tmp_path / "densenet", resume=False)
    match = run_ban(_cfg(*small, "model.name=densenet-bc-10-4", "model.dropout=0.3", "ban.generations=1",
                         "ban.student_model=match-wrn-1-1", "ban.share_stem_and_head=true", "ban.ensembles=[]",
                         f"ban.teacher_run={tmp_path / 'densenet' / 'gen0'}"), tmp_path / "match", resume=False)
    assert match["student_model"] == "match-wrn-1-1" and len(match["generations"]) == 2
    run_ban(_cfg(*small, "model.name=wrn-10-1", "model.dropout=0.3", "ban.generations=0"), tmp_path / "wrn",
            resume=False)
    with pytest.raises(UserError, match=r"model.kwargs.dropout \(recorded 0.3, now 0.0\)"):
        run_ban(_cfg(*small, "model.name=wrn-10-1", "model.dropout=0.0", "ban.generations=1",
                     f"ban.teacher_run={tmp_path / 'wrn' / 'gen0'}"), tmp_path / "refused", resume=False)
    assert not (tmp_path / "refused").exists()
    # the family's default (0.3) given or not builds the same model, and data.root says only where the data are
    same = run_ban(_cfg(*small, "model.name=wrn-10-1", "model.dropout=null", "ban.generations=1", "ban.ensembles=[]",
                        "data.root=elsewhere", f"ban.teacher_run={tmp_path / 'wrn' / 'gen0'}"), tmp_path / "same",
                   resume=False)
    assert len(same["generations"]) == 2
