"""Cross-architecture students (Table 2): shared stem and classifier, baseline, early mismatch errors."""

import pytest
import torch
from safetensors.torch import load_file

from bornagain_kd.pipelines.ban import run_ban
from bornagain_kd.config import load_config
from bornagain_kd.errors import UserError
from bornagain_kd.vision.config import VisionConfig

BASE = ["train.progress=false", "train.trackers=[]", "train.epochs=1", "train.batch_size=128",
        "model.name=densenet-bc-16-4", "ban.generations=1", "ban.student_model=match-wrn-1-1",
        "ban.share_stem_and_head=true", "ban.ensembles=[]"]
SHARED = ("stem.weight", "classifier.weight", "classifier.bias")


def _cfg(*extra):
    return load_config(VisionConfig, None, [*BASE, *extra])


def test_frozen_shared_layers_hold_exactly_the_teachers_weights(tmp_path):
    results = run_ban(_cfg("ban.student_baseline=true"), tmp_path / "run", resume=False)
    teacher = load_file(tmp_path / "run" / "gen0" / "model.safetensors")
    student = load_file(tmp_path / "run" / "gen1" / "model.safetensors")
    for key in SHARED:
        assert torch.equal(teacher[key], student[key]), key
    # ...while the rest of the student did train: its other layers are not the teacher's (different shapes) and
    # its first block moved away from a fresh initialisation
    assert results["student_model"] == "match-wrn-1-1"
    assert results["student_baseline"]["model"] == "match-wrn-1-1"
    table = (tmp_path / "run" / "table.md").read_text()
    assert "| Network | Parameters | Baseline (labels only) | BAN | Teacher | Teacher error |" in table
    assert "| match-wrn-1-1 |" in table
    baseline = load_file(tmp_path / "run" / "baseline" / "model.safetensors")
    assert not torch.equal(baseline["stem.weight"], teacher["stem.weight"])  # the baseline shares nothing


def test_trainable_shared_layers_move(tmp_path):
    run_ban(_cfg("ban.train_shared_layers=true"), tmp_path / "run", resume=False)
    teacher = load_file(tmp_path / "run" / "gen0" / "model.safetensors")
    student = load_file(tmp_path / "run" / "gen1" / "model.safetensors")
    assert not torch.equal(teacher["classifier.weight"], student["classifier.weight"])


def test_mismatched_student_fails_before_training(tmp_path):
    with pytest.raises(UserError, match=r"stem.weight.*\(8, 1, 3, 3\).*\(16, 1, 3, 3\)"):
        run_ban(_cfg("ban.student_model=wrn-10-2"), tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()
