"""A run killed with SIGKILL in the middle of an epoch resumes to exactly the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["train.epochs=3", "model.name=resnet-8", "train.batch_size=128", "train.progress=false",
        "train.trackers=[]", "train.num_threads=1", "data.train_subset=640", "data.val_size=128"]


def _run(command, out, *extra, kill_at=None):
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1")
    env.pop("BORNAGAIN_KILL_AT_STEP", None)
    if kill_at is not None:
        env["BORNAGAIN_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "bornagain_kd.cli", command, "--output", str(out), *extra, *ARGS],
                          env=env, capture_output=True, text=True, timeout=600)


def _same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkill_mid_epoch_then_resume_is_identical(tmp_path):
    ref = _run("train", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # 512 training images / 128 = 4 steps an epoch: step 6 is the middle of epoch 2
    killed = _run("train", tmp_path / "run", kill_at=6)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "run" / "results.json").exists()
    resumed = _run("train", tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # how long it took, and the speed choices with their measured reasons (train.compile=auto): not what it learned
    untimed = lambda r: {k: v for k, v in r.items() if k not in ("train_seconds", "speed")}
    ref_results = json.loads((tmp_path / "ref" / "results.json").read_text())
    run_results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert untimed(run_results) == untimed(ref_results)
    assert set(run_results) == set(ref_results)
    assert _same_weights(tmp_path / "ref" / "model.safetensors", tmp_path / "run" / "model.safetensors")
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # the interrupted epoch is logged once


def test_ban_killed_in_a_student_generation_resumes_identically(tmp_path):
    extra = ["ban.generations=1", "train.epochs=2"]
    ref = _run("ban", tmp_path / "ref", *extra)
    assert ref.returncode == 0, ref.stderr
    killed = _run("ban", tmp_path / "run", *extra, kill_at="gen1:5")  # mid epoch 2 of gen1
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "gen0" / "results.json").exists()
    assert not (tmp_path / "run" / "gen1" / "results.json").exists()
    resumed = _run("ban", tmp_path / "run", "--resume", *extra)
    assert resumed.returncode == 0, resumed.stderr
    ref_gens = json.loads((tmp_path / "ref" / "results.json").read_text())["generations"]
    run_gens = json.loads((tmp_path / "run" / "results.json").read_text())["generations"]
    drop = lambda g: {k: v for k, v in g.items() if k != "train_seconds"}
    assert [drop(g) for g in run_gens] == [drop(g) for g in ref_gens]
    assert _same_weights(tmp_path / "ref" / "gen1" / "model.safetensors", tmp_path / "run" / "gen1" / "model.safetensors")


def test_killed_before_the_first_checkpoint_restarts_cleanly(tmp_path):
    killed = _run("train", tmp_path / "run", kill_at=2)  # inside epoch 1: no checkpoint yet
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    resumed = _run("train", tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


FAST = ["train.ema_decay=0.9", "train.schedule=triangle", "train.label_smoothing=0.1", "train.tta=flip",
        "data.hflip=true", "data.flip_mode=alternate", "data.pad_mode=reflect", "train.norm_lr_scale=4"]


@pytest.mark.parametrize("averaging", ["ema", "lookahead"])
def test_resume_is_identical_with_weight_averaging_and_the_fast_options(tmp_path, averaging):
    """The average is part of the checkpoint: a run killed mid-epoch resumes to the uninterrupted run's weights
    (the average), test outputs and records."""
    # 4 steps an epoch; a checkpoint at step 5 (mid epoch 2, the average last moved at step 3), killed at step 7
    extra = [f"train.weight_averaging={averaging}", "train.ema_every_steps=3", "train.checkpoint_every_steps=5", *FAST]
    ref = _run("train", tmp_path / "ref", *extra)
    assert ref.returncode == 0, ref.stderr
    killed = _run("train", tmp_path / "run", *extra, kill_at=7)
    assert killed.returncode == -signal.SIGKILL
    resumed = _run("train", tmp_path / "run", "--resume", *extra)
    assert resumed.returncode == 0, resumed.stderr
    untimed = lambda r: {k: v for k, v in r.items() if k not in ("train_seconds", "speed")}
    ref_results = json.loads((tmp_path / "ref" / "results.json").read_text())
    run_results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert untimed(run_results) == untimed(ref_results)
    assert run_results["weight_averaging"]["mode"] == averaging and run_results["tta"] == "flip"
    assert _same_weights(tmp_path / "ref" / "model.safetensors", tmp_path / "run" / "model.safetensors")
    assert _same_weights(tmp_path / "ref" / "test_probs.safetensors", tmp_path / "run" / "test_probs.safetensors")
