"""Born-again students that start well (the default) and a warning when one does not (the paper's weights).

Reproduction on digits: a ResNet-20 teacher trained 8 epochs ends near one-hot on its training
set; with the paper's BAN+L weights (1, 1) its student's KL term is about as large as its label
term, the summed loss overshoots at lr 0.1 and the student's first epoch collapses (seeds 0 and 1,
AVX-512 and AVX2 kernels: 12-16% training accuracy against the teacher's 38-40%, test error 31-36%
against 1.4-3.1%). The default normalises the weights to 0.5 / 0.5 and starts like the teacher (38-42%).
"""

import json

import pytest

from bornagain_kd.config import load_config
from bornagain_kd.pipelines.ban import run_ban, start_warning
from bornagain_kd.vision.config import VisionConfig

COMMON = ["train.progress=false", "train.trackers=[]", "train.num_threads=1", "model.name=resnet-20",
          "train.epochs=8", "seed=0"]


def _first_epoch(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.slow
def test_confident_teacher_collapses_the_papers_student_and_the_default_avoids_it(tmp_path):
    teacher = run_ban(load_config(VisionConfig, None, [*COMMON, "ban.generations=0"]), tmp_path / "t", resume=False)
    teacher_first = _first_epoch(tmp_path / "t" / "gen0")
    reuse = [*COMMON, "ban.generations=1", f"ban.teacher_run={tmp_path / 't' / 'gen0'}"]
    paper = run_ban(load_config(VisionConfig, None, [*reuse, "ban.normalize_loss_weights=false"]), tmp_path / "paper",
                    resume=False)
    default = run_ban(load_config(VisionConfig, None, reuse), tmp_path / "default", resume=False)
    teacher_error = teacher["generations"][0]["test_error"]

    paper_first = _first_epoch(tmp_path / "paper" / "gen1")
    assert paper["loss_weights"]["label_weight"] == paper["loss_weights"]["teacher_weight"] == 1.0
    assert paper_first["train_accuracy"] < 0.5 * teacher_first["train_accuracy"]  # the collapse
    assert paper["generations"][1]["test_error"] > 3 * teacher_error
    warnings = json.loads((tmp_path / "paper" / "gen1" / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and "started badly" in warnings[0] and "ban.student_warmup_epochs" in warnings[0]

    default_first = _first_epoch(tmp_path / "default" / "gen1")
    assert default["loss_weights"]["label_weight"] == default["loss_weights"]["teacher_weight"] == 0.5
    assert default_first["train_accuracy"] > 0.8 * teacher_first["train_accuracy"]
    # The final errors are one seed's on 360 images, and the CPU's kernels move them (default student, seeds 0
    # and 1: 3.33 and 3.61% with AVX-512, 3.89 and 0.83% with ATEN_CPU_CAPABILITY=avx2; teacher 1.39-3.06%), so
    # no final number is compared with the teacher's. The collapse is another order of size: the paper's student
    # ended at 30.8-36.1% in those four runs, more than 7x the default's worst.
    assert default["generations"][1]["test_error"] < paper["generations"][1]["test_error"] / 3
    assert json.loads((tmp_path / "default" / "gen1" / "results.json").read_text())["warnings"] == []


def test_start_warning_thresholds():
    teacher = {"epoch": 1, "train_accuracy": 40.0, "train_label_loss": 1.5}
    fine = {"epoch": 1, "train_accuracy": 30.0, "train_label_loss": 1.8}
    assert start_warning(fine, teacher, 10) is None
    assert start_warning({**fine, "train_accuracy": 15.0}, teacher, 10) is not None  # below half the teacher's
    assert start_warning({**fine, "train_label_loss": 2.2}, teacher, 10) is not None  # near chance (ln 10 = 2.30)
    assert start_warning({**fine, "epoch": 2, "train_accuracy": 1.0}, teacher, 10) is None  # only the first epoch
    assert start_warning(fine, None, 10) is None
    # the advice fits the run: normalising is suggested only where the weights are the paper's summed 1 / 1
    summed = start_warning({**fine, "train_accuracy": 15.0}, teacher, 10, normalized=False)
    normalised = start_warning({**fine, "train_accuracy": 15.0}, teacher, 10, normalized=True)
    assert "ban.normalize_loss_weights=true" in summed and "ban.normalize_loss_weights" not in normalised
    assert "ban.student_warmup_epochs=1" in normalised
