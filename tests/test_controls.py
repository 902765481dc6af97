"""The controls a reviewer asks for (ban.controls): independent ensembles beside Ens*K, a label-smoothing student;
trained beside a finished sequence without retraining it, tabled, compared and read."""

import json

import pytest
import torch
import torch.nn.functional as F

from bornagain_kd.config import load_config
from bornagain_kd.errors import UserError
from bornagain_kd.pipelines.ban import run_ban
from bornagain_kd.reports.ensembles import average_probabilities, load_probs
from bornagain_kd.reports.metrics import classification_metrics
from bornagain_kd.vision.config import VisionConfig

SMALL = ["train.epochs=1", "ban.generations=2", "ban.ensembles=[2]", "data.train_subset=300", "data.val_size=100",
         "train.progress=false", "train.trackers=[]", "train.num_threads=1"]
CONTROLS = ["ban.controls=[independent,label_smoothing]", "ban.label_smoothing=[0.05,0.3]"]


def _cfg(*overrides):
    return load_config(VisionConfig, None, [*SMALL, *overrides])


def test_controls_join_a_finished_sequence_without_retraining_it(tmp_path):
    from bornagain_kd.api import run_ban as api_run_ban

    out = tmp_path / "run"
    api_run_ban(_cfg(), output=out)
    stamps = {g: (out / g / "model.safetensors").stat().st_mtime_ns for g in ("gen0", "gen1", "gen2")}
    results = api_run_ban(_cfg(*CONTROLS), output=out, resume=True)  # adding controls is a resume, not a new run
    assert {g: (out / g / "model.safetensors").stat().st_mtime_ns for g in stamps} == stamps

    # Ind*2: the teacher and one more independent run, averaged; the same metric as computed here from their files
    ind = results["controls"]["independent"]["ensembles"]
    assert [e["name"] for e in ind] == ["Ind*2"] and ind[0]["members"] == ["gen0", "controls/independent-1"]
    probs, labels = zip(*(load_probs(out / m / "test_probs.safetensors") for m in ind[0]["members"]))
    assert ind[0]["test_error"] == pytest.approx(classification_metrics(average_probabilities(list(probs)),
                                                                        labels[0])["error"])
    assert json.loads((out / "controls/independent-1/results.json").read_text())["seed"] != results["seed"]

    # label smoothing: one run per candidate, the lowest validation error chosen (never the test set)
    ls = results["controls"]["label_smoothing"]
    assert [c["epsilon"] for c in ls["candidates"]] == [0.05, 0.3]
    assert ls["val_error"] == min(c["val_error"] for c in ls["candidates"])
    assert ls["selected_by"] == "lowest validation error"

    table = (out / "table.md").read_text()
    assert "| Ind*2 | Label smoothing |" in table and f"epsilon = {ls['epsilon']:g}" in table
    assert any(r.startswith("Ens*2 - Ind*2: ") for r in results["readings"])
    assert any(r.startswith("BAN-1 - label smoothing: ") for r in results["readings"])

    stamp = (out / "controls/independent-1/model.safetensors").stat().st_mtime_ns
    api_run_ban(_cfg(*CONTROLS), output=out, resume=True)
    assert (out / "controls/independent-1/model.safetensors").stat().st_mtime_ns == stamp  # finished: reused


def test_controls_pool_over_seeds_with_their_comparisons(tmp_path):
    agg = run_ban(_cfg("ban.controls=[independent,label_smoothing]", "ban.label_smoothing=[0.1]", "ban.seeds=[0,1]"),
                  tmp_path / "seeds", resume=False)
    names = [c["name"] for c in agg["columns"]]
    assert names[-2:] == ["Ind*2", "label smoothing"]
    pairs = [(c["a"], c["b"]) for c in agg["comparisons"]]
    assert ("Ens*2", "Ind*2") in pairs and ("BAN-1", "label smoothing") in pairs
    ls = next(c for c in agg["comparisons"] if c["b"] == "label smoothing")
    assert ls["power"]["n"] == 2 and len(ls["mcnemar"]) == 2


def test_label_smoothing_loss_is_cross_entropy_against_smoothed_targets():
    from bornagain_kd.distill.ban_losses import label_smoothing_loss

    logits, labels = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 0])
    target = 0.9 * F.one_hot(labels, 5) + 0.1 / 5  # (1 - eps) one-hot + eps / C
    expected = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    parts = label_smoothing_loss(0.1)(logits, None, labels)
    assert torch.allclose(parts["loss"], expected) and torch.allclose(parts["label_loss"], F.cross_entropy(logits, labels))


@pytest.mark.parametrize("overrides, message", [
    (["ban.controls=[independent]", "ban.student_model=resnet-14"], "ban.student_baseline instead"),
    (["ban.controls=[independent]", "ban.ensembles=[]"], "has no K between 2"),
    (["ban.controls=[label_smoothing,label_smoothing]"], "names a control twice"),
    (["ban.controls=[label_smoothing]", "ban.label_smoothing=[1.5]"], "between 0 and 1"),
])
def test_bad_controls_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message):
        _cfg(*overrides)


def test_choosing_the_smoothing_needs_a_validation_split():
    with pytest.raises(UserError, match="chosen on the validation split"):  # refused before anything trains
        _cfg(*CONTROLS, "data.val_size=0")
    assert _cfg("ban.controls=[label_smoothing]", "ban.label_smoothing=[0.1]", "data.val_size=0")  # given: fine


def test_the_longer_control_trains_the_teacher_for_both_trainings_epochs_and_is_reused(tmp_path):
    from bornagain_kd.api import run_ban as api_run_ban

    out = tmp_path / "run"
    results = api_run_ban(_cfg("ban.generations=1", "ban.ensembles=[]", "ban.controls=[longer]"), output=out)
    longer = json.loads((out / "controls/longer/results.json").read_text())
    teacher = json.loads((out / "gen0/results.json").read_text())
    assert longer["epochs"] == 2 == 2 * teacher["epochs"] and results["controls"]["longer"]["epochs"] == 2
    assert longer["model"] == teacher["model"] and longer["seed"] == teacher["seed"]  # the teacher's init, longer
    records = [json.loads(line) for line in (out / "controls/longer/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch_seconds" in r] == [1, 2]
    assert "| Longer |" in (out / "table.md").read_text()
    assert any(r.startswith("BAN-1 - longer: ") for r in results["readings"])
    stamp = (out / "controls/longer/model.safetensors").stat().st_mtime_ns
    api_run_ban(_cfg("ban.generations=1", "ban.ensembles=[]", "ban.controls=[longer,doubled_label]"), output=out,
                resume=True)
    assert (out / "controls/longer/model.safetensors").stat().st_mtime_ns == stamp  # finished: reused
    assert (out / "controls/doubled-label/results.json").is_file()  # the added control alone was trained


def test_the_doubled_label_control_is_ban_1_without_its_teacher(tmp_path):
    """With the teacher's weight 0, BAN-1's loss is its label term alone: the control, which is BAN-1 without the
    teacher (its seed, order and augmentation), must then end with BAN-1's very predictions. With the paper's
    weights 1 / 1 its label term is doubled."""
    from bornagain_kd.api import run_ban as api_run_ban

    out = tmp_path / "zero"
    api_run_ban(_cfg("ban.generations=1", "ban.ensembles=[]", "ban.controls=[doubled_label]",
                     "ban.normalize_loss_weights=false", "ban.teacher_weight=0"), output=out)
    ban1 = load_probs(out / "gen1/test_probs.safetensors")[0]
    control = load_probs(out / "controls/doubled-label/test_probs.safetensors")[0]
    torch.testing.assert_close(control, ban1, rtol=0, atol=1e-6)
    paper = api_run_ban(_cfg("ban.generations=1", "ban.ensembles=[]", "ban.controls=[doubled_label]",
                             "ban.normalize_loss_weights=false"), output=tmp_path / "paper")
    assert paper["controls"]["doubled_label"]["label_weight"] == 2.0
    assert json.loads((tmp_path / "paper/controls/doubled-label/results.json").read_text())["label_weight"] == 2.0


def test_the_longer_control_starts_from_a_reused_train_runs_seed(tmp_path):
    from bornagain_kd.api import run_ban as api_run_ban
    from bornagain_kd.cli import main

    assert main(["train", "--output", str(tmp_path / "teacher"), *SMALL[:1], *SMALL[3:]]) == 0
    api_run_ban(_cfg("ban.generations=1", "ban.ensembles=[]", "ban.controls=[longer]",
                     f"ban.teacher_run={tmp_path / 'teacher'}"), output=tmp_path / "seq")
    teacher = json.loads((tmp_path / "teacher/results.json").read_text())
    assert json.loads((tmp_path / "seq/controls/longer/results.json").read_text())["seed"] == teacher["seed"]
    with pytest.raises(UserError, match="teacher_run_other_schedule"):
        _cfg("ban.controls=[longer]", "ban.teacher_run_other_schedule=true", f"ban.teacher_run={tmp_path}")
