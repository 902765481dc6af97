"""Bad input gets one clear message (exit status 2) and leaves nothing half-written."""

import os
import subprocess
import sys


from bornagain_kd.cli import main

FAST = ["train.epochs=1", "model.name=resnet-8", "train.progress=false", "train.trackers=[]"]


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bornagain: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_data_root(tmp_path, capsys):
    err = _error(capsys, ["train", "--output", str(tmp_path / "out"), "data.name=imagefolder",
                          f"data.root={tmp_path / 'nowhere'}", *FAST])
    assert "nowhere" in err
    assert not (tmp_path / "out").exists()


def test_image_folder_without_classes(tmp_path, capsys):
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    (tmp_path / "imgs" / "test").mkdir()
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), "data.name=imagefolder",
                          f"data.root={tmp_path / 'imgs'}", *FAST])
    assert "class" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_as_config_and_a_subset_too_small_for_its_classes(tmp_path, capsys):
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), "--config", str(tmp_path)])
    assert "is a folder" in err
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *FAST, "data.train_subset=5"])
    assert "data.train_subset=5 cannot hold one image of each of the 10 classes" in err  # not "lower val_size"
    assert not (tmp_path / "out").exists()


def test_unknown_model_name(tmp_path, capsys):
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *FAST, "model.name=resnet-999x"])
    assert "resnet-999x" in err and "densenet-bc" in err  # names the bad one, lists the known families
    assert not (tmp_path / "out").exists()


def test_unknown_config_key(tmp_path, capsys):
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *FAST, "ban.generation=3"])
    assert "ban.generation" in err and "ban.generations" in err
    assert not (tmp_path / "out").exists()


def test_student_that_cannot_take_the_teachers_layers(tmp_path, capsys):
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), *FAST, "ban.student_model=wrn-10-2",
                          "ban.share_stem_and_head=true"])
    assert "stem" in err or "classifier" in err
    assert not (tmp_path / "out").exists()


def test_used_output_needs_resume_and_resume_needs_a_run(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    assert "--resume" in _error(capsys, ["train", "--output", str(tmp_path / "out"), *FAST])
    assert "no run to resume" in _error(capsys, ["train", "--output", str(tmp_path / "empty"), "--resume", *FAST])


def test_corrupt_checkpoint_on_resume(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1", BORNAGAIN_KILL_AT_STEP="13")  # digits: 11 steps/epoch at 128
    args = [sys.executable, "-m", "bornagain_kd.cli", "train", "--output", str(out), "train.epochs=2",
            "model.name=resnet-8", "train.batch_size=128", "train.progress=false", "train.trackers=[]",
            "train.num_threads=1"]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode < 0
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    env.pop("BORNAGAIN_KILL_AT_STEP")
    resumed = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2
    assert "checkpoint" in resumed.stderr and "corrupt" in resumed.stderr and "Traceback" not in resumed.stderr


def test_resume_with_a_changed_config_is_refused(tmp_path, capsys):
    assert main(["ban", "--output", str(tmp_path / "out"), *FAST, "ban.generations=0"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["ban", "--output", str(tmp_path / "out"), "--resume", *FAST, "ban.generations=0",
                          "train.lr=0.05"])
    assert "train.lr" in err


def test_warnings_are_printed_by_rank_0_only(monkeypatch, capsys):
    """Under torchrun every rank meets the same warning (DDP's find_unused_parameters note, a renamed key):
    one copy, from rank 0."""
    import sys

    from bornagain_kd import cli
    from bornagain_kd.cli import _show_warning
    from bornagain_kd.errors import RenamedKeyWarning

    # Python's own printer (pytest replaces warnings.showwarning while it runs)
    monkeypatch.setattr(cli, "_default_showwarning", lambda message, *a, **k: print(message, file=sys.stderr))
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        _show_warning(UserWarning("find_unused_parameters=True was specified"), UserWarning, "x.py", 1)
        _show_warning(RenamedKeyWarning("teacher.epochs is now train.epochs"), RenamedKeyWarning, "x.py", 1)
        err = capsys.readouterr().err
        assert ("find_unused_parameters" in err) == printed
        assert ("bornagain: warning: teacher.epochs" in err) == printed
