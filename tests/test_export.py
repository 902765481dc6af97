"""`bornagain export`: a finished run as a shareable folder, and that folder (local, or hf:// from the hub's cache)
as ban.teacher_run, teaching exactly as the run directory does."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bornagain_kd.cli import main
from bornagain_kd.config import load_config, save_config
from bornagain_kd.errors import UserError
from bornagain_kd.pipelines.export import export_run, load_exported

FAST = ["model.name=resnet-8", "train.epochs=1", "train.batch_size=64", "data.train_subset=200", "data.val_size=50",
        "train.progress=false", "train.num_threads=1"]
STUDENT = [*FAST, "ban.generations=1", "ban.ensembles=[]"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny `bornagain train` run (digits) and its export."""
    root = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--output", str(root / "run"), *FAST]) == 0
    assert main(["export", str(root / "run"), str(root / "export")]) == 0
    return root / "run", root / "export"


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bornagain: error: ") and "\n" not in err
    return err


def test_the_folder_rebuilds_the_model_and_its_card_parses(teacher):
    run, export = teacher
    assert {p.name for p in export.iterdir()} == {"model.safetensors", "config.json", "README.md", "results.json",
                                                  "metrics.jsonl", "test_probs.safetensors"}
    model, settings = load_exported(export)  # from config.json alone
    theirs = load_file(run / "model.safetensors")
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items()) and len(theirs) == len(
        model.state_dict())
    assert settings["model"]["num_classes"] == 10 and settings["input"]["channels"] == 1
    assert settings["classes"] == [str(c) for c in range(10)] and len(settings["input"]["mean"]) == 1
    results = json.loads((run / "results.json").read_text())
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(export / "README.md")  # the hub's own parser of the front matter
    assert card.data.library_name == "bornagain" and "bornagain" in card.data.tags
    assert card.data.eval_results[0].metric_value == pytest.approx(results["test_accuracy"])
    assert "ban.teacher_run=hf://OWNER/NAME" in card.text and "data.train_subset=200" in card.text


def test_students_of_the_export_equal_students_of_the_run(teacher, tmp_path):
    run, export = teacher
    assert main(["ban", "--output", str(tmp_path / "from-run"), *STUDENT, f"ban.teacher_run={run}"]) == 0
    assert main(["ban", "--output", str(tmp_path / "from-export"), *STUDENT, f"ban.teacher_run={export}"]) == 0
    a, b = (load_file(tmp_path / d / "gen1" / "model.safetensors") for d in ("from-run", "from-export"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("from-run", "from-export"))
    for row in ra["generations"] + rb["generations"]:
        row.pop("teacher_run", None), row.pop("train_seconds", None)
    assert ra["generations"] == rb["generations"] and ra["readings"] == rb["readings"]
    assert (tmp_path / "from-run" / "table.md").read_text() == (tmp_path / "from-export" / "table.md").read_text()


def test_an_exported_teacher_is_checked_like_its_run(teacher, tmp_path, capsys):
    export = teacher[1]
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *STUDENT, "seed=1", f"ban.teacher_run={export}"])
    assert "changed: seed" in err
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *STUDENT, "model.name=resnet-14",
                          f"ban.teacher_run={export}"])
    assert "holds a resnet-8" in err
    assert not (tmp_path / "out").exists()


def test_a_hub_teacher_comes_from_the_hub_cache_and_offline_without_it_is_a_user_error(teacher, tmp_path, capsys,
                                                                                        monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")  # (a submodule loaded on import)
    cache = tmp_path / "hub"  # the hub cache's layout for a model someone/teacher at one commit
    commit = "0" * 40
    shutil.copytree(teacher[1], cache / "models--someone--teacher" / "snapshots" / commit)
    (cache / "models--someone--teacher" / "refs").mkdir()
    (cache / "models--someone--teacher" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["ban", "--output", str(tmp_path / "hub-student"), *STUDENT, "ban.teacher_run=hf://someone/teacher",
                 "ban.generations=0"]) == 0
    result = json.loads((tmp_path / "hub-student" / "results.json").read_text())
    assert result["generations"][0]["teacher_run"].endswith(commit)
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *STUDENT, "ban.teacher_run=hf://someone/missing"])
    assert "hf://someone/missing" in err and "online" in err
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *STUDENT, "ban.teacher_run=hf://no-owner"])
    assert "hf://OWNER/NAME" in err
    assert not (tmp_path / "out").exists()


def test_what_cannot_be_exported_and_where_it_cannot_be_written(teacher, tmp_path, capsys):
    run, export = teacher
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "results.json").unlink()
    assert "is not finished" in _error(capsys, ["export", str(unfinished), str(tmp_path / "a")])
    sequence = tmp_path / "sequence"
    shutil.copytree(run, sequence / "gen0")
    assert "export one of its runs" in _error(capsys, ["export", str(sequence), str(tmp_path / "a")])
    glue = tmp_path / "glue-teacher"
    glue.mkdir()
    from bornagain_kd.glue.config import GlueExperimentConfig

    save_config(load_config(GlueExperimentConfig, None, []), glue / "config.yaml")
    (glue / "results.json").write_text("{}")
    assert "not a vision run" in _error(capsys, ["export", str(glue), str(tmp_path / "a")])
    assert "already an exported folder" in _error(capsys, ["export", str(export), str(tmp_path / "a")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in _error(capsys, ["export", str(run), str(busy)])
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "a").exists()
    # over an earlier export of the same run: written again; of another run: refused, the earlier one kept
    again = export_run(run, export)
    assert again["source"]["weights_sha256"] == json.loads((export / "config.json").read_text())["source"][
        "weights_sha256"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    state = load_file(other / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(other / "model.safetensors"))
    with pytest.raises(UserError, match="an export of another run"):
        export_run(other, export)
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("given, repo_name", [("hf://someone/teacher", "teacher"),
                                              ("hf://someone/teacher-{seed}", "teacher-0")])  # one per seed
def test_a_hub_teacher_stays_at_the_commit_its_sequence_started_with(teacher, tmp_path, monkeypatch, given,
                                                                     repo_name):
    """The pin is written and read under the same name: with {seed} the name the seed fills in (it was written
    under the template and looked up under the filled-in name, so a resume silently took the branch's head)."""
    constants = pytest.importorskip("huggingface_hub.constants")  # (a submodule loaded on import)
    repo = tmp_path / "hub" / f"models--someone--{repo_name}"  # the hub cache's layout, two commits of the teacher
    first, moved = "1" * 40, "2" * 40
    for commit in (first, moved):
        shutil.copytree(teacher[1], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = [*STUDENT, f"ban.teacher_run={given}", "ban.generations=0", "seed=0"]
    assert main(["ban", "--output", str(tmp_path / "seq"), *args]) == 0
    (repo / "refs" / "main").write_text(moved)  # the branch moved on while the sequence was interrupted
    assert main(["ban", "--output", str(tmp_path / "seq"), "--resume", *args]) == 0
    teacher_of = lambda out: json.loads((out / "results.json").read_text())["generations"][0]["teacher_run"]  # noqa: E731
    assert teacher_of(tmp_path / "seq").endswith(first)
    assert main(["ban", "--output", str(tmp_path / "new"), *args]) == 0  # a new sequence takes the branch's latest
    assert teacher_of(tmp_path / "new").endswith(moved)


def test_a_teacher_of_another_image_folder_with_the_same_classes_is_refused_before_training(tmp_path, capsys):
    from recipe_fixtures import write_image_folder

    folders = [write_image_folder(tmp_path / name, seed=i) for i, name in enumerate(("a", "b"))]
    shutil.copy(next((folders[1] / "test" / "class3").iterdir()), folders[1] / "test" / "class3" / "more.png")
    data = ["data.name=imagefolder", "data.val_size=10", "data.train_subset=null"]
    assert main(["train", "--output", str(tmp_path / "teacher"), *FAST[:3], *FAST[5:], *data,
                 f"data.root={folders[0]}"]) == 0
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *STUDENT[:3], *STUDENT[5:], *data,
                          f"data.root={folders[1]}", f"ban.teacher_run={tmp_path / 'teacher'}"])
    assert "another test set" in err and not (tmp_path / "out").exists()


def test_the_export_names_no_path_of_this_machine(teacher):
    run, export = teacher
    here = str(run.parent)
    assert here not in (export / "config.json").read_text() and here not in (export / "README.md").read_text()
    assert "output_dir" not in json.loads((export / "config.json").read_text())["config"]


def test_a_failed_publish_puts_the_earlier_export_back(teacher, tmp_path, monkeypatch):
    run, _ = teacher
    out = tmp_path / "export"
    export_run(run, out)
    before = (out / "config.json").read_text()
    replace = os.replace

    def full_disk(src, dst):  # the new folder cannot be moved into place (after the old one was moved aside)
        if Path(src).name.startswith(".export.new-"):
            raise OSError(28, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(UserError, match="earlier export there is kept"):
        export_run(run, out)
    assert (out / "config.json").read_text() == before and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # nothing left aside
