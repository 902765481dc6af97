"""engine/run.py: the one owner of a run directory's life (create or reopen, settings record, finished, lock)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bornagain_kd.engine.run import (
    CHECKPOINT, FORMAT, RESULTS, SETTINGS, RunSettings, check_command_dir, command_dir, open_run, record_command,
    recorded_settings,
)
from bornagain_kd.errors import UserError


def _settings(lr=0.1, threads=1):
    return RunSettings("vision", {"train": {"lr": lr, "num_threads": threads}, "seed": 0},
                       ignore=("train.num_threads",))


def test_a_new_run_records_its_settings_and_config_then_is_checked_when_reopened(tmp_path):
    run = tmp_path / "run"
    assert open_run(run, _settings(), resume=False, main=True, config={"seed": 0}) == "new"
    record = json.loads((run / SETTINGS).read_text())
    assert record == {"format": FORMAT, "kind": "vision", "settings": _settings().tree}
    assert yaml.safe_load((run / "config.yaml").read_text()) == {"seed": 0}
    (run / CHECKPOINT).write_bytes(b"")  # interrupted
    with pytest.raises(UserError, match="unfinished run: pass --resume"):
        open_run(run, _settings(), resume=False, main=True)
    assert open_run(run, _settings(threads=2), resume=True, main=True) == "resume"  # a mechanic may differ
    with pytest.raises(UserError, match=r"train\.lr \(recorded 0\.1, now 0\.2\)") as refused:
        open_run(run, _settings(lr=0.2), resume=True, main=True)
    assert "(add train.lr=0.1)" in str(refused.value)  # the overrides that continue it, as typed
    (run / RESULTS).write_text("{}")
    assert open_run(run, _settings(), resume=False, main=True) == "finished"  # never retrained
    with pytest.raises(UserError, match="other settings"):
        open_run(run, _settings(lr=0.2), resume=False, main=True)  # nor reused under other settings


def test_a_fresh_start_replaces_the_record_of_an_attempt_that_never_checkpointed(tmp_path):
    run = tmp_path / "run"
    open_run(run, _settings(lr=0.1), resume=False, main=True)
    assert open_run(run, _settings(lr=0.2), resume=False, main=True) == "new"
    assert recorded_settings(run)["train"]["lr"] == 0.2


@pytest.mark.parametrize("legacy", ["teacher_settings.json", "student_settings.json", "config.yaml"])
def test_run_directories_made_before_settings_json_are_still_read(tmp_path, legacy):
    run = tmp_path / "run"
    run.mkdir()
    tree = _settings().tree
    (run / legacy).write_text(json.dumps(tree) if legacy.endswith(".json") else yaml.safe_dump(tree))
    (run / CHECKPOINT).write_bytes(b"")
    assert open_run(run, _settings(), resume=True, main=True) == "resume"
    with pytest.raises(UserError, match=r"train\.lr"):
        open_run(run, _settings(lr=0.3), resume=True, main=True)


def test_a_settings_record_of_another_format_is_refused_by_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / SETTINGS).write_text(json.dumps({"train": {"lr": 0.1}}))  # hand-written, no format
    (run / RESULTS).write_text("{}")
    with pytest.raises(UserError, match="not a bornagain settings record"):
        open_run(run, _settings(), resume=True, main=True)


def test_the_command_directory_rules_and_a_refused_command_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="holds no run to resume"):
        check_command_dir(out, _settings(), resume=True)
    check_command_dir(out, _settings(), resume=False)
    with pytest.raises(RuntimeError):  # a command that fails its own checks before recording anything
        with command_dir(out, main=True):
            raise RuntimeError("refused")
    assert not out.exists()
    with command_dir(out, main=True):
        record_command(out, _settings(), {"seed": 0}, main=True)
        record_command(out, _settings(lr=0.5), {"seed": 1}, main=True)  # the record stays what it was made with
    assert recorded_settings(out)["train"]["lr"] == 0.1
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"seed": 1}  # the config it last ran with
    with pytest.raises(UserError, match="not empty: pass --resume"):
        check_command_dir(out, _settings(), resume=False)
    check_command_dir(out, _settings(threads=4), resume=True)
    with pytest.raises(UserError, match=r"train\.lr"):
        check_command_dir(out, _settings(lr=0.5), resume=True)


def test_the_process_is_set_up_once_per_command(monkeypatch):
    """Every run of a command (generations, teachers, students) asks for the process; it is set up once (threads,
    device, process group), and again only after a command's end left the process group."""
    import bornagain_kd.pipelines.common as common
    from bornagain_kd.config import TrainingConfig

    monkeypatch.setattr(common, "_STARTED", {})
    calls = []
    real = common._start_process
    monkeypatch.setattr(common, "_start_process", lambda train: calls.append(train) or real(train))
    first = common.start_process(TrainingConfig(device="cpu"))
    again = common.start_process(TrainingConfig(device="cpu", epochs=3))  # another run of the same command
    assert again == first and len(calls) == 1
    common.start_process(TrainingConfig(device="cpu", num_threads=torch.get_num_threads()))  # other settings
    assert len(calls) == 2


def test_progress_bars_are_drawn_on_a_terminal_only(monkeypatch, tmp_path):
    """A log file (stderr redirected, a SLURM output) gets the epoch lines, not redrawn bars."""
    import os
    import subprocess
    import sys

    from bornagain_kd.engine import run_log

    monkeypatch.delenv("BORNAGAIN_NO_PROGRESS", raising=False)
    monkeypatch.setattr(run_log, "stderr_is_terminal", lambda: True)
    assert run_log.bars_shown(True) and not run_log.bars_shown(False)
    monkeypatch.setattr(run_log, "stderr_is_terminal", lambda: False)
    assert not run_log.bars_shown(True) and list(run_log.progress(range(3))) == [0, 1, 2]
    env = {k: v for k, v in os.environ.items() if k != "BORNAGAIN_NO_PROGRESS"}
    done = subprocess.run([sys.executable, "-m", "bornagain_kd", "ban", "--output", str(tmp_path / "run"),
                           "ban.generations=0", "train.epochs=2", "train.num_threads=1", "train.trackers=[]"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "it/s" not in done.stderr and "\r" not in done.stderr
    assert "[gen0] epoch 1 " in done.stdout and "[gen0] epoch 2 " in done.stdout
